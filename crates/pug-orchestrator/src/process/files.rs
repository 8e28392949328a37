//! The files of a replica's directory as isolation wants them: written private and renamed
//! into place, shared read-only with the tenant's group, or handed to the tenant's user; and
//! who owned them before.
//!
//! Owns: file modes and owners under a tenant's directory (never following symbolic links).
//!
//! Must not: choose the layout of a replica's directory (the backend does) or create users.

use std::path::Path;

use crate::isolation::{self, TenantUser};

/// Writes a file only pug's user can read, or with `group`, also that group (0640, the tenant's
/// group reading its own settings). Written to a temporary name and renamed into place.
pub(super) fn write_private(
    path: &Path,
    contents: &[u8],
    group: Option<u32>,
) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    if let Some(gid) = group {
        std::os::unix::fs::fchown(&f, None, Some(gid))?;
        f.set_permissions(std::fs::Permissions::from_mode(0o640))?;
    }
    f.write_all(contents)?;
    f.sync_all()?;
    std::fs::rename(tmp, path)
}

/// `path` (a directory pug owns) owned by pug's user and `gid`, with `mode`.
pub(super) fn share_with_group(path: &Path, gid: u32, mode: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(
        path,
        Some(nix::unistd::Uid::effective().as_raw()),
        Some(gid),
    )?;
    isolation::set_mode(path, mode)
}

/// A tree pug writes (provisioning) made readable by the tenant's group only: dirs 0750, files
/// 0640, owned by pug's user. Symbolic links are neither followed nor changed.
pub(super) fn share_tree_with_group(path: &Path, gid: u32) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    if meta.is_dir() {
        share_with_group(path, gid, 0o750)?;
        for entry in std::fs::read_dir(path)? {
            share_tree_with_group(&entry?.path(), gid)?;
        }
        Ok(())
    } else {
        share_with_group(path, gid, 0o640)
    }
}

/// A directory the tenant's Grafana writes (`data`, `logs`…): owned by the tenant's user, 0700.
/// When it belonged to someone else (made before isolation was on), everything in it is handed
/// over too, without following symbolic links.
pub(super) fn give_to(path: &Path, user: TenantUser) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path)?;
    if meta.uid() != user.uid || meta.gid() != user.gid {
        chown_tree(path, user)?;
    }
    isolation::set_mode(path, 0o700)
}

pub(super) fn chown_tree(path: &Path, user: TenantUser) -> std::io::Result<()> {
    std::os::unix::fs::lchown(path, Some(user.uid), Some(user.gid))?;
    let meta = std::fs::symlink_metadata(path)?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), user)?;
        }
    }
    Ok(())
}

/// The owners of a tenant's replicas' `data` dirs: the user ids its instances ran as.
pub(super) fn tenant_uids_in(tenant_dir: &Path) -> Vec<u32> {
    use std::os::unix::fs::MetadataExt;
    let mut uids = Vec::new();
    for entry in std::fs::read_dir(tenant_dir)
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Ok(meta) = std::fs::symlink_metadata(entry.path().join("data")) {
            if !uids.contains(&meta.uid()) {
                uids.push(meta.uid());
            }
        }
    }
    uids
}
