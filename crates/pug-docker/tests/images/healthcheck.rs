//! A container health check for images without a shell or `wget` (the test images are
//! `FROM scratch`): `healthcheck http://127.0.0.1:PORT/PATH [HEADER: VALUE]...` exits 0 when the
//! answer is 2xx (the extra headers let attack tests send a request from inside a container).
//!
//! Built with plain `rustc` (std only) by `build.sh`, statically linked.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

fn main() {
    let url = std::env::args().nth(1).unwrap_or_default();
    let headers: Vec<String> = std::env::args().skip(2).collect();
    let code = match check(&url, &headers) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{url}: {e}");
            1
        }
    };
    std::process::exit(code);
}

fn check(url: &str, headers: &[String]) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or("only http:// URLs are supported")?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = std::net::ToSocketAddrs::to_socket_addrs(host)
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("no address")?;
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(3)))
        .map_err(|e| e.to_string())?;
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n{extra}\r\n").map_err(|e| e.to_string())?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).map_err(|e| e.to_string())?;
    let status = String::from_utf8_lossy(&head[9..12]).to_string();
    if status.starts_with('2') {
        Ok(())
    } else {
        Err(format!("status {status}"))
    }
}
