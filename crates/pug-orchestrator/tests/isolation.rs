//! The process backend with isolation on (as root): each instance runs as its tenant's user with
//! no supplementary groups, and files have the modes that keep tenants apart. The firewall is a
//! recording fake here (the real `iptables` chain is exercised by pug's attack suite).

use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pug_orchestrator::install::Installer;
use pug_orchestrator::isolation::{
    Firewall, Isolation, IsolationSettings, Mode, Started, TenantUser, TenantUsers,
};
use pug_orchestrator::process::{ProcessBackend, ProcessSettings};
use pug_orchestrator::{DatabaseSettings, InstanceSecrets, InstanceSpec, Orchestrator};
use pug_types::{GrafanaVersion, Overrides, SecretString, TenantId};

#[derive(Debug)]
struct Users(HashMap<String, u32>);

#[async_trait::async_trait]
impl TenantUsers for Users {
    async fn user_of(&self, tenant: &TenantId) -> Result<TenantUser, String> {
        let uid = *self.0.get(tenant.as_str()).ok_or("unknown tenant")?;
        Ok(TenantUser { uid, gid: uid })
    }
}

#[derive(Debug, Default)]
struct Recorder(Mutex<Vec<String>>);

impl Firewall for Recorder {
    fn run(&self, program: &str, args: &[String]) -> Result<String, String> {
        self.0
            .lock()
            .unwrap()
            .push(format!("{program} {}", args.join(" ")));
        if args.get(1).map(String::as_str) == Some("-C") {
            return Err("no such rule".into());
        }
        Ok(String::new())
    }
}

/// A "grafana" that writes its pid into `--pidfile` (as the tenant's user, into its `run/`) and
/// then sleeps (the shell stays, so its command line keeps `--pidfile` for adoption).
const SCRIPT: &str = "#!/bin/sh\nwhile [ $# -gt 0 ]; do case \"$1\" in --pidfile) pf=\"$2\"; shift;; esac; shift; done\necho $$ > \"$pf\"\nsleep 300\n";

fn spec(tenant: &str, port: u16) -> InstanceSpec {
    InstanceSpec {
        tenant: TenantId::parse(tenant).unwrap(),
        replica: 0,
        version: GrafanaVersion::parse("11.3.0").unwrap(),
        root_url: format!("http://127.0.0.1/t/{tenant}/"),
        serve_from_sub_path: true,
        gateway: pug_orchestrator::GatewayTrust::Addresses(vec!["127.0.0.1".into()]),
        port,
        secrets: InstanceSecrets {
            admin_password: SecretString::from("pw".to_owned()),
            secret_key: SecretString::from("sk".to_owned()),
            renderer_token: None,
        },
        database: DatabaseSettings::Sqlite,
        rendering: None,
        plugin_preinstall: false,
        data_source_proxy_whitelist: Vec::new(),
        overrides: Overrides::default(),
        provisioning: Default::default(),
    }
}

fn mode_of(path: &Path) -> (u32, u32, u32) {
    let m = std::fs::symlink_metadata(path).unwrap();
    (m.uid(), m.gid(), m.permissions().mode() & 0o7777)
}

fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .unwrap()
        .trim()
        .to_owned()
}

#[tokio::test]
async fn instances_run_as_their_tenants_user_without_groups_and_files_are_kept_apart() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: needs root (CI runs as root)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // Tenant users must reach the data dir and the binary: the temp dir is 0700 by default.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = tmp.path().join("pug-data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("master.key"), "k").unwrap();
    let bin_dir = tmp.path().join("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    let bin = bin_dir.join("grafana");
    std::fs::write(&bin, SCRIPT).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();

    let firewall = Arc::new(Recorder::default());
    let users = Users(HashMap::from([
        ("acme".into(), 230_001),
        ("bravo".into(), 230_002),
    ]));
    let Started::Isolated(iso) = Isolation::start(IsolationSettings {
        mode: Mode::Required,
        data_dir: data.clone(),
        ports: (29_900, 29_909),
        users: Arc::new(users),
        firewall: firewall.clone(),
        uids: (230_001, 2),
        uid_claims: tmp.path().join("claims"),
    })
    .unwrap() else {
        panic!("isolation is possible as root");
    };
    let calls = firewall.0.lock().unwrap().clone();
    for program in ["iptables", "ip6tables"] {
        assert!(calls.iter().any(|c| c.starts_with(program)
            && c.contains("--dport 29900:29909 -m owner ! --uid-owner 0")
            && c.contains("-j REJECT --reject-with tcp-reset")));
        assert!(calls
            .iter()
            .any(|c| c == &format!("{program} -w -I OUTPUT 1 -j {}", iso.chain())));
    }

    let backend = ProcessBackend::new(
        ProcessSettings {
            root: data.join("tenants"),
            archive: data.join("archive"),
            bind_address: "127.0.0.1".into(),
            stop_timeout: Duration::from_secs(2),
            isolation: Some(iso.clone()),
        },
        Installer::new(Some(bin.clone()), data.join("grafana"), "https://unused"),
    )
    .unwrap();
    for (tenant, port) in [("acme", 29_900), ("bravo", 29_901)] {
        backend.ensure(&spec(tenant, port)).await.unwrap();
    }
    let pid_of = |tenant: &str, port: u16| -> u32 {
        let run = data.join(format!("tenants/{tenant}/replica-0/run"));
        let mut found = None;
        for _ in 0..200 {
            found = std::fs::read_dir(&run)
                .unwrap()
                .flatten()
                .find(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with(&format!("{port}-"))
                })
                .and_then(|e| std::fs::read_to_string(e.path()).ok())
                .and_then(|s| s.trim().parse().ok());
            if found.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        found.expect("the instance wrote its pid file")
    };
    let acme = pid_of("acme", 29_900);
    // The process: the tenant's uid and gid, real and effective, and no supplementary group.
    assert_eq!(status_field(acme, "Uid:"), "230001\t230001\t230001\t230001");
    assert_eq!(status_field(acme, "Gid:"), "230001\t230001\t230001\t230001");
    assert_eq!(status_field(acme, "Groups:"), "");
    let bravo = pid_of("bravo", 29_901);
    assert!(status_field(bravo, "Uid:").starts_with("230002\t"));

    // Files: pug's data dir traversable only; the tenant's dir reachable by its group only;
    // settings root's and group-readable; what Grafana writes, the tenant's alone.
    let r = |p: &str| data.join(p);
    assert_eq!(mode_of(&data).2, 0o711);
    assert_eq!(mode_of(&r("tenants")), (0, 0, 0o711));
    assert_eq!(mode_of(&r("tenants/acme")), (0, 230_001, 0o710));
    assert_eq!(mode_of(&r("tenants/acme/replica-0")), (0, 230_001, 0o750));
    assert_eq!(
        mode_of(&r("tenants/acme/replica-0/grafana.ini")),
        (0, 230_001, 0o640)
    );
    assert_eq!(mode_of(&r("tenants/acme/replica-0/console.log")).2, 0o600);
    for sub in ["data", "logs", "plugins", "run"] {
        let p = r(&format!("tenants/acme/replica-0/{sub}"));
        assert_eq!(mode_of(&p), (230_001, 230_001, 0o700), "{sub}");
    }
    let (_, gid, mode) = mode_of(&r("tenants/acme/replica-0/provisioning/datasources"));
    assert_eq!((gid, mode), (230_001, 0o750));
    assert_eq!(mode_of(&r("archive")), (0, 0, 0o700));

    // An instance adopted by a restarted pug keeps running (it runs as the right user).
    drop(backend);
    let again = ProcessBackend::new(
        ProcessSettings {
            root: data.join("tenants"),
            archive: data.join("archive"),
            bind_address: "127.0.0.1".into(),
            stop_timeout: Duration::from_secs(2),
            isolation: Some(iso.clone()),
        },
        Installer::new(Some(bin.clone()), data.join("grafana"), "https://unused"),
    )
    .unwrap();
    again.ensure(&spec("acme", 29_900)).await.unwrap();
    assert_eq!(
        pid_of("acme", 29_900),
        acme,
        "the adopted instance was kept"
    );

    // Deleting a tenant: its processes end and its files go to root's private archive.
    let acme_id = TenantId::parse("acme").unwrap();
    again.remove(&acme_id, 0).await.unwrap();
    again.archive(&acme_id).await.unwrap();
    assert!(!r("tenants/acme").exists());
    assert!(
        !Path::new(&format!("/proc/{acme}")).exists()
            || status_field(acme, "State:").starts_with('Z')
    );
    again.stop_all().await;
    again.shutdown();
    let calls = firewall.0.lock().unwrap().clone();
    assert!(calls
        .iter()
        .any(|c| c == &format!("iptables -w -X {}", iso.chain())));
}
