//! Unit tests of the isolation module (`super`).
//!
//! Owns: its decisions, the host checks, the firewall chain names and rules, and installing them
//! (through a fake of the firewall tool).
//!
//! Must not: change the machine (no real firewall, no users).

use super::*;
use std::sync::Mutex;

#[test]
fn decisions() {
    let p = || Some("pug runs as uid 1000, not root".to_owned());
    let table = [
        (Mode::Auto, None, Decision::Isolate),
        (Mode::Required, None, Decision::Isolate),
        (
            Mode::Off,
            None,
            Decision::Shared {
                reason: "process.isolation is off".into(),
            },
        ),
        (
            Mode::Off,
            p(),
            Decision::Shared {
                reason: "process.isolation is off".into(),
            },
        ),
        (
            Mode::Auto,
            p(),
            Decision::Shared {
                reason: p().unwrap(),
            },
        ),
        (
            Mode::Required,
            p(),
            Decision::Refuse {
                reason: format!("process.isolation is required but {}", p().unwrap()),
            },
        ),
    ];
    for (mode, problem, want) in table {
        assert_eq!(decide(mode, problem.clone()), want, "{mode:?} {problem:?}");
    }
}

#[test]
fn host_problems() {
    let ok = vec![
        (PathBuf::from("/srv"), 0o40755),
        (PathBuf::from("/"), 0o40755),
    ];
    assert_eq!(host_problem(0, &ok), None);
    assert!(host_problem(1000, &ok).unwrap().contains("not root"));
    let closed = vec![
        (PathBuf::from("/tmp/.tmpX"), 0o40700),
        (PathBuf::from("/"), 0o40755),
    ];
    let p = host_problem(0, &closed).unwrap();
    assert!(
        p.contains("/tmp/.tmpX (mode 700)") && p.contains("chmod o+x"),
        "{p}"
    );
    // Searchable without being readable is enough.
    assert_eq!(host_problem(0, &[(PathBuf::from("/x"), 0o40711)]), None);
}

#[test]
fn chain_names_are_short_stable_and_per_data_dir() {
    let a = chain_name(Path::new("/srv/pug-data"));
    assert_eq!(a, chain_name(Path::new("/srv/pug-data")));
    assert_ne!(a, chain_name(Path::new("/srv/other")));
    assert!(
        a.starts_with("PUG-") && a.len() == 12 && a.len() <= 28,
        "{a}"
    );
}

#[test]
fn the_reject_rule() {
    let table = [
        (
            (20000, 29999),
            0,
            "/srv/pug-data",
            "-w -A PUG-X -o lo -p tcp --syn --dport 20000:29999 -m owner ! --uid-owner 0 \
                 -m comment --comment pug /srv/pug-data -j REJECT --reject-with tcp-reset",
        ),
        (
            (21000, 21099),
            990,
            "/tmp/a b",
            "-w -A PUG-X -o lo -p tcp --syn --dport 21000:21099 -m owner ! --uid-owner 990 \
                 -m comment --comment pug /tmp/a b -j REJECT --reject-with tcp-reset",
        ),
    ];
    for (ports, uid, dir, want) in table {
        assert_eq!(
            reject_rule("PUG-X", ports, uid, Path::new(dir)).join(" "),
            want
        );
    }
    // The comment is one argument, spaces and all.
    let rule = reject_rule("PUG-X", (1, 2), 0, Path::new("/tmp/a b"));
    assert!(rule.contains(&"pug /tmp/a b".to_owned()));
}

#[test]
fn stale_chains_are_those_whose_data_dir_is_gone() {
    let listing = "-P OUTPUT ACCEPT\n\
            -N PUG-AAAA0001\n-N PUG-BBBB0002\n-N PUG-CCCC0003\n-N OTHER\n\
            -A OUTPUT -j PUG-AAAA0001\n\
            -A PUG-AAAA0001 -o lo -p tcp -m tcp --dport 1:2 --tcp-flags FIN,SYN,RST,ACK SYN -m owner ! --uid-owner 0 -m comment --comment \"pug /gone/pug data\" -j REJECT --reject-with tcp-reset\n\
            -A PUG-BBBB0002 -o lo -p tcp -m comment --comment \"pug /alive\" -j REJECT\n\
            -A PUG-CCCC0003 -o lo -p tcp -m comment --comment pug -j REJECT\n\
            -A OTHER -m comment --comment \"pug /gone/x\" -j REJECT\n";
    let exists = |p: &Path| p == Path::new("/alive");
    assert_eq!(
        stale_chains(listing, exists),
        vec!["PUG-AAAA0001".to_owned()]
    );
}

#[derive(Debug, Default)]
struct Fake {
    calls: Mutex<Vec<String>>,
    fail: Vec<&'static str>,
}

impl Firewall for Fake {
    fn run(&self, program: &str, args: &[String]) -> Result<String, String> {
        let line = format!("{program} {}", args.join(" "));
        self.calls.lock().unwrap().push(line.clone());
        if self.fail.iter().any(|f| line.contains(f)) {
            return Err(format!("{line} failed"));
        }
        if args.get(1).map(String::as_str) == Some("-S") {
            return Ok(
                "-A PUG-DEAD0000 -m comment --comment \"pug /nonexistent/pug-x\" -j REJECT\n"
                    .into(),
            );
        }
        Ok(String::new())
    }
}

#[test]
fn install_replaces_its_chain_jumps_once_and_removes_stale_chains() {
    let fw = Fake {
        fail: vec!["-N PUG-", "-D OUTPUT"],
        ..Default::default()
    };
    let dir = Path::new("/srv/pug-data");
    let chain = install_firewall(&fw, dir, (20000, 20009), 0).unwrap();
    let calls = fw.calls.lock().unwrap().clone();
    for program in ["iptables", "ip6tables"] {
        let mine: Vec<&String> = calls
            .iter()
            .filter(|c| c.starts_with(&format!("{program} ")))
            .collect();
        let has = |s: &str| mine.iter().any(|c| c.as_str() == format!("{program} {s}"));
        assert!(has("-w -X PUG-DEAD0000"), "{mine:?}");
        assert!(has(&format!("-w -F {chain}")), "{mine:?}");
        assert!(has(&format!("-w -C OUTPUT -j {chain}")));
        // The jump exists already (-C succeeded): not inserted twice.
        assert!(!has(&format!("-w -I OUTPUT 1 -j {chain}")));
        assert!(mine.iter().any(|c| c.contains("--dport 20000:20009")));
        // The input chain: connections from other machines to instance ports are reset.
        assert!(has(&format!("-w -F {chain}-IN")), "{mine:?}");
        assert!(has(&format!("-w -C INPUT -j {chain}-IN")));
        assert!(mine.iter().any(|c| c.starts_with(&format!(
            "{program} -w -A {chain}-IN ! -i lo -p tcp --syn --dport 20000:20009"
        ))));
    }
    // Missing jumps are inserted first in OUTPUT and INPUT.
    let fw = Fake {
        fail: vec!["-C OUTPUT", "-C INPUT"],
        ..Default::default()
    };
    install_firewall(&fw, dir, (1, 2), 0).unwrap();
    let calls = fw.calls.lock().unwrap();
    assert!(calls
        .iter()
        .any(|c| c == &format!("iptables -w -I OUTPUT 1 -j {chain}")));
    assert!(calls
        .iter()
        .any(|c| c == &format!("iptables -w -I INPUT 1 -j {chain}-IN")));
    // A failing rule is an error naming the command.
    let fw = Fake {
        fail: vec!["-A PUG-"],
        ..Default::default()
    };
    let err = install_firewall(&fw, dir, (1, 2), 0).unwrap_err();
    assert!(err.contains("-A PUG-"), "{err}");
}

#[test]
fn status_uid() {
    let status = "Name:\tgrafana\nUid:\t200001\t200001\t200001\t200001\nGid:\t1\t1\t1\t1\n";
    assert_eq!(parse_status_uid(status), Some(200001));
    assert_eq!(parse_status_uid("Name: x\n"), None);
    assert_eq!(
        process_uid(std::process::id()),
        Some(nix::unistd::Uid::current().as_raw())
    );
}
