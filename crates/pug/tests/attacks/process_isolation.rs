//! Attacks on the process backend's trust domain (issue 14 hole 1, review F1; hole 17's pug.db
//! mode): code running in tenant A's Grafana, as A's instance user, tries to reach tenant B's
//! Grafana (and its own) as `admin` without going through pug's gateway, and to read pug's and
//! B's secrets. pug runs as root with `process.isolation = "required"`, as CI does.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::support::Pug;

const T: Duration = Duration::from_secs(60);

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// The real uid of a process.
fn uid_of(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap()
}

/// The pid of `tenant`'s replica 0.
fn instance_pid(pug: &Pug, tenant: &str) -> u32 {
    let instances = pug.instances();
    instances
        .iter()
        .find(|(k, _)| k == &format!("{tenant}/replica-0"))
        .map(|(_, p)| *p)
        .unwrap_or_else(|| panic!("no instance of {tenant} in {instances:?}"))
}

/// The port an instance listens on, from its `--pidfile …/run/<port>-<hash>.pid`.
fn port_of(pid: u32) -> u16 {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let pidfile = &args[args.iter().position(|a| a == "--pidfile").unwrap() + 1];
    let file = Path::new(pidfile).file_name().unwrap().to_string_lossy();
    file.split('-').next().unwrap().parse().unwrap()
}

/// Runs `program args` as `uid` (and gid `uid`), without supplementary groups: what code in
/// that tenant's Grafana could do.
fn as_user(uid: u32, program: &str, args: &[&str]) -> Output {
    Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .arg("--clear-groups")
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("setpriv runs")
}

/// `curl` with the auth-proxy header Grafana trusts from 127.0.0.1; returns (curl's exit code,
/// HTTP status and body).
fn curl_as_admin(uid: Option<u32>, url: &str) -> (i32, String) {
    let args = [
        "-sS",
        "--max-time",
        "5",
        "-H",
        "X-WEBAUTH-USER: admin",
        "-w",
        "\n%{http_code}",
        url,
    ];
    let out = match uid {
        Some(uid) => as_user(uid, "curl", &args),
        None => Command::new("curl").args(args).output().unwrap(),
    };
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Signs in through the gateway and fetches `/t/<tenant>/api/user`: (status, body).
fn through_the_gateway(url: &str, tenant: &str, user: &str, password: &str) -> (u16, String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = pug_test_support::http::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let cookie = crate::support::set_cookie;
        let page = client.get(format!("{url}/login")).send().await.unwrap();
        let csrf = cookie(&page, "pug_csrf").expect("a csrf cookie");
        let value = csrf.split_once('=').unwrap().1.to_owned();
        let next = format!("/t/{tenant}/");
        let r = client
            .post(format!("{url}/login"))
            .header("cookie", &csrf)
            .form(&[
                ("user", user),
                ("password", password),
                ("csrf", &value),
                ("next", &next),
            ])
            .send()
            .await
            .unwrap();
        let session = cookie(&r, "pug_session").expect("signed in");
        let r = client
            .get(format!("{url}/t/{tenant}/api/user"))
            .header("cookie", &session)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    })
}

#[test]
fn tenant_instance_user_cannot_reach_grafanas_as_admin_nor_read_pugs_or_other_tenants_files() {
    if !is_root() {
        eprintln!("skipped: process isolation needs root (CI runs as root)");
        return;
    }
    let pug = Pug::start((23700, 23719), &[("PUG_PROCESS_ISOLATION", "required")]);
    for t in ["alpha", "bravo"] {
        pug.ok(&["tenant", "create", t, "--version", "11.3.0"]);
    }
    for t in ["alpha", "bravo"] {
        pug.wait_phase(t, "ready", T);
    }
    let pid = |name: &str| instance_pid(&pug, name);
    let (a_pid, b_pid) = (pid("alpha"), pid("bravo"));
    let a_uid = uid_of(a_pid);
    assert_ne!(a_uid, 0, "tenant alpha's Grafana runs as root");
    assert_ne!(a_uid, uid_of(b_pid), "two tenants share one user");
    let (a_port, b_port) = (port_of(a_pid), port_of(b_pid));

    // (a) Straight to B's port (and A's own) with Grafana's auth-proxy header: refused. Root's
    // own request shows what the attack would get otherwise (the header is trusted from here).
    let b_user = format!("http://127.0.0.1:{b_port}/t/bravo/api/user");
    let (code, out) = curl_as_admin(None, &b_user);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("\"login\":\"admin\"") && out.ends_with("200"),
        "{out}"
    );
    for (what, url) in [
        ("tenant bravo's instance", b_user.clone()),
        (
            "tenant alpha's own instance",
            format!("http://127.0.0.1:{a_port}/t/alpha/api/user"),
        ),
        (
            "tenant bravo's health",
            format!("http://127.0.0.1:{b_port}/t/bravo/api/health"),
        ),
    ] {
        let (code, out) = curl_as_admin(Some(a_uid), &url);
        assert_eq!(code, 7, "{what} answered alpha's user: {out}");
        assert!(!out.contains("admin"), "{what}: {out}");
    }

    // (b) pug's secrets and B's settings: permission denied.
    let data = &pug.data;
    let b_ini = data.join("tenants/bravo/replica-0/grafana.ini");
    for file in [
        data.join("master.key"),
        data.join("local.token"),
        data.join("pug.db"),
        data.join("pug.db-wal"),
        b_ini.clone(),
        data.join("tenants/bravo/replica-0/data/grafana.db"),
    ] {
        if !file.exists() {
            continue;
        }
        let out = as_user(a_uid, "cat", &[file.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("Permission denied"),
            "alpha's user read {}: {err}",
            file.display()
        );
    }
    // …while A's user reads its own settings (so the refusals above are not an accident).
    let own = data.join("tenants/alpha/replica-0/grafana.ini");
    let out = as_user(a_uid, "cat", &[own.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in ["master.key", "local.token", "pug.db"] {
        let mode = std::fs::metadata(data.join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }

    // (c) Listing B's instance dir, the tenants and pug's data dir: permission denied.
    for dir in [
        data.join("tenants/bravo/replica-0"),
        data.join("tenants/bravo"),
        data.join("tenants"),
        data.to_owned(),
    ] {
        let out = as_user(a_uid, "ls", &[dir.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("Permission denied"),
            "alpha's user listed {}: {err}",
            dir.display()
        );
    }

    // The gateway still serves both tenants to the people granted them.
    pug.create_user("alice", "alice-password-1");
    pug.ok(&["user", "grant", "alice", "alpha", "--role", "Viewer"]);
    pug.ok(&["user", "grant", "alice", "bravo", "--role", "Viewer"]);
    for tenant in ["alpha", "bravo"] {
        let (status, body) = through_the_gateway(&pug.url, tenant, "alice", "alice-password-1");
        assert_eq!(status, 200, "{tenant}: {body}");
        assert!(body.contains("\"login\":\"alice\""), "{tenant}: {body}");
    }
}

#[test]
fn without_root_or_with_isolation_off_pug_says_tenants_are_not_isolated() {
    if !is_root() {
        return;
    }
    let pug = Pug::start((23720, 23724), &[("PUG_PROCESS_ISOLATION", "off")]);
    let log = pug.log();
    assert!(
        log.contains("tenants are NOT isolated") && log.contains("run pug as root with iptables"),
        "{log}"
    );
    // (That a pug that cannot isolate refuses to start when isolation is required, with one
    // line saying why, is `isolation::tests::decisions` and `host_problems`.)
}

/// Two pugs on one host with the same tenant uid range would give the same uid to a tenant of
/// each: one could read the other's files, and deleting a tenant on one kills the other's
/// Grafana (pug kills every process of a deleted tenant's uid). The second pug refuses to start.
#[test]
fn a_second_pug_cannot_give_out_the_uids_of_a_running_one() {
    if !is_root() {
        eprintln!("skipped: process isolation needs root (CI runs as root)");
        return;
    }
    let first = Pug::start((23730, 23734), &[("PUG_PROCESS_ISOLATION", "required")]);
    let base = crate::support::tenant_uid_base((23730, 23734));
    let other = tempfile::tempdir().unwrap();
    let mut second = Command::new(crate::support::pug_bin())
        .args(["serve", "--data-dir"])
        .arg(other.path().join("pug-data"))
        .arg("--listen")
        // Port 0: it is to refuse before it binds.
        .arg("127.0.0.1:0")
        .env("PUG_PROCESS_ISOLATION", "required")
        .env("PUG_PROCESS_PORT_MIN", "23735")
        .env("PUG_PROCESS_PORT_MAX", "23739")
        .env("PUG_PROCESS_TENANT_UID_BASE", (base + 500).to_string())
        .env("PUG_RENDERER_MODE", "off")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status =
        crate::support::wait_for(T, "the second pug to exit", || second.try_wait().unwrap());
    let out = second.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!status.success(), "the second pug started: {stderr}");
    assert!(
        stderr.contains("claimed") && stderr.contains(&first.data.display().to_string()),
        "{stderr}"
    );
    // The first pug's claim stays; once it is gone, the range is free again.
    drop(first);
    let base = base.to_string();
    let again = Pug::start(
        (23735, 23739),
        &[
            ("PUG_PROCESS_ISOLATION", "required"),
            ("PUG_PROCESS_TENANT_UID_BASE", &base),
        ],
    );
    again.ok(&["tenant", "list"]);
}

/// A deleted tenant's uid goes to the next tenant created: what the old tenant's Grafana left
/// in the machine's shared `/tmp` must not pass to the new one with it.
#[test]
fn a_deleted_tenants_files_in_tmp_do_not_pass_to_the_next_owner_of_its_uid() {
    if !is_root() {
        eprintln!("skipped: process isolation needs root (CI runs as root)");
        return;
    }
    let pug = Pug::start((28000, 28009), &[("PUG_PROCESS_ISOLATION", "required")]);
    pug.ok(&[
        "tenant",
        "create",
        "leaver",
        "--version",
        "11.3.0",
        "--wait",
    ]);
    let pid = &instance_pid(&pug, "leaver");
    let old_uid = uid_of(*pid);
    // The instance's temporary files are its own: TMPDIR is inside its replica directory.
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let tmpdir = pug.data.join("tenants/leaver/replica-0/tmp");
    assert!(
        String::from_utf8_lossy(&environ).contains(&format!("TMPDIR={}", tmpdir.display())),
        "{}",
        String::from_utf8_lossy(&environ)
    );
    // Code in leaver's Grafana writes to the shared /tmp anyway.
    let left = format!("/tmp/pug-leftover-{}", std::process::id());
    let out = as_user(
        old_uid,
        "sh",
        &["-c", &format!("umask 077; echo leaver-secret > {left}")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    pug.ok(&["tenant", "delete", "leaver"]);
    crate::support::wait_for(T, "the tenant to be deleted", || {
        (!pug.cli(&["tenant", "show", "leaver"]).status.success()).then_some(())
    });
    pug.ok(&[
        "tenant",
        "create",
        "arriver",
        "--version",
        "11.3.0",
        "--wait",
    ]);
    let pid = &instance_pid(&pug, "arriver");
    assert_eq!(
        uid_of(*pid),
        old_uid,
        "the freed uid went to the next tenant"
    );
    let out = as_user(old_uid, "cat", &[&left]);
    let _ = std::fs::remove_file(&left);
    assert!(
        !out.status.success() && !String::from_utf8_lossy(&out.stdout).contains("leaver-secret"),
        "the next owner of the uid read what the deleted tenant left in /tmp"
    );
}

/// A network namespace standing for another machine, joined to this one by a veth pair
/// (`host` here, `peer` there); removed when dropped.
struct OtherMachine {
    netns: String,
}

impl OtherMachine {
    fn new(host: &str, peer: &str) -> Self {
        let netns = format!("pugatk{}", std::process::id());
        let (h, n) = (
            format!("pa{}h", std::process::id()),
            format!("pa{}n", std::process::id()),
        );
        let run = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().expect("ip runs");
            assert!(
                out.status.success(),
                "ip {args:?}: {} (the test needs iproute2)",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let _ = Command::new("ip").args(["netns", "del", &netns]).output();
        run(&["netns", "add", &netns]);
        run(&["link", "add", &h, "type", "veth", "peer", "name", &n]);
        run(&["link", "set", &n, "netns", &netns]);
        run(&["addr", "add", &format!("{host}/30"), "dev", &h]);
        run(&["link", "set", &h, "up"]);
        run(&[
            "netns",
            "exec",
            &netns,
            "ip",
            "addr",
            "add",
            &format!("{peer}/30"),
            "dev",
            &n,
        ]);
        run(&["netns", "exec", &netns, "ip", "link", "set", &n, "up"]);
        run(&["netns", "exec", &netns, "ip", "link", "set", "lo", "up"]);
        Self { netns }
    }

    /// `curl` from the other machine: (curl's exit code, output).
    fn curl(&self, url: &str) -> (i32, String) {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.netns,
                "curl",
                "-sS",
                "--max-time",
                "5",
                url,
            ])
            .output()
            .expect("ip runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code().unwrap_or(-1), text)
    }
}

impl Drop for OtherMachine {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of the pair, and with it this end.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .output();
    }
}

/// With `process.bind_address` on a network address, another machine connects straight to an
/// instance port, without the gateway: reset. Other ports of that address stay reachable from
/// there (so the refusal is pug's rule, not the network).
#[test]
fn another_machine_cannot_reach_an_instance_on_a_network_bind_address() {
    if !is_root() {
        eprintln!("skipped: process isolation needs root (CI runs as root)");
        return;
    }
    let (host, peer) = ("10.231.77.1", "10.231.77.2");
    let other = OtherMachine::new(host, peer);
    let pug = Pug::start(
        (28010, 28019),
        &[
            ("PUG_PROCESS_ISOLATION", "required"),
            ("PUG_PROCESS_BIND_ADDRESS", host),
        ],
    );
    pug.ok(&[
        "tenant",
        "create",
        "exposed",
        "--version",
        "11.3.0",
        "--wait",
    ]);
    let pid = &instance_pid(&pug, "exposed");
    let port = port_of(*pid);

    // The control: a listener of this machine on the same address answers the other machine.
    let listener = std::net::TcpListener::bind((host, 0)).unwrap();
    let control = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf);
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\nconnection: close\r\n\r\ncontrol");
    });
    let (code, out) = other.curl(&format!("http://{host}:{control}/"));
    assert_eq!((code, out.as_str()), (0, "control"));
    server.join().unwrap();

    let (code, out) = other.curl(&format!("http://{host}:{port}/t/exposed/api/health"));
    assert_eq!(code, 7, "the instance answered another machine: {out}");
    // pug itself still reaches it (the tenant is served through the gateway).
    pug.create_user("alice", "alice-password-1");
    pug.ok(&["user", "grant", "alice", "exposed", "--role", "Viewer"]);
    let (status, body) = through_the_gateway(&pug.url, "exposed", "alice", "alice-password-1");
    assert_eq!(status, 200, "{body}");
    drop(other);
}
