//! The `grafana-standin` binary as a test starts it: where it is, and the address it reports
//! once it listens (it logs `msg="HTTP Server Listen" address=<addr>`, as Grafana does, after
//! binding; tests give it `http_port = 0`).
//!
//! Owns: building and finding the binary, and reading the listen line from its stderr.
//!
//! Must not: configure it (each test sets the settings it is about).

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

/// The grafana-standin binary next to the running test binary, built on demand (another
/// package's binary, which cargo does not build for another package's tests by itself).
pub fn bin() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/<test> → target/<profile>
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>");
    let bin = dir.join("grafana-standin");
    static BUILD: std::sync::Once = std::sync::Once::new();
    BUILD.call_once(|| {
        if !bin.exists() {
            let status = Command::new(env!("CARGO"))
                .args(["build", "-p", "grafana-standin"])
                .status()
                .expect("cargo runs");
            assert!(status.success(), "building grafana-standin failed");
        }
    });
    assert!(
        bin.exists(),
        "grafana-standin not found at {}",
        bin.display()
    );
    bin
}

/// The address in a stand-in's listen line, if `line` is one.
pub fn parse_listen_line(line: &str) -> Option<SocketAddr> {
    if !line.contains("msg=\"HTTP Server Listen\"") {
        return None;
    }
    line.split("address=")
        .nth(1)?
        .split(' ')
        .next()?
        .parse()
        .ok()
}

/// Reads a stand-in's stderr until its listen line and returns the address in it, or `None`
/// if the stream ends (the process exited) or `timeout` passes first. The rest of the stream
/// is drained in the background, so the stand-in never blocks on a full pipe.
pub fn listen_addr(stderr: impl Read + Send + 'static, timeout: Duration) -> Option<SocketAddr> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if !sent {
                if let Some(addr) = parse_listen_line(&line) {
                    sent = true;
                    let _ = tx.send(addr);
                }
            }
        }
    });
    rx.recv_timeout(timeout).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listen_line_gives_the_address() {
        let line = "logger=http.server t=2024 level=info msg=\"HTTP Server Listen\" \
                    address=127.0.0.1:40123 protocol=http subUrl= socket=";
        assert_eq!(
            parse_listen_line(line),
            Some("127.0.0.1:40123".parse().unwrap())
        );
        assert_eq!(
            parse_listen_line("msg=\"Starting\" address=127.0.0.1:1"),
            None
        );
    }

    #[test]
    fn the_address_is_read_from_the_stream() {
        let text = "msg=\"Starting\"\nmsg=\"HTTP Server Listen\" address=[::1]:3000\nmore\n";
        let got = listen_addr(
            std::io::Cursor::new(text.to_owned()),
            Duration::from_secs(5),
        );
        assert_eq!(got, Some("[::1]:3000".parse().unwrap()));
        let none = listen_addr(std::io::Cursor::new("no line\n"), Duration::from_secs(5));
        assert_eq!(none, None);
    }
}
