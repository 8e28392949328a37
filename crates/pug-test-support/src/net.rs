//! Ports without a reuse race. A port found free and released (`bind(0)`, read, drop) can be
//! taken by anyone before the test's server binds it; instead the server binds port 0 and the
//! test learns the port from it: from what the server reports, or, for a child process that
//! does not report it, from the kernel ([`listening_addrs`]).
//!
//! A server that cannot take port 0 (the `pug` binary derives URLs it hands tenants from the
//! configured port) gets a [`PortLease`]: a port of a band below the kernel's ephemeral range
//! (so never handed to anyone by `bind(0)` or `connect`), held by a file lock for as long as
//! the test keeps the lease, so no two tests (in any process) get the same one.
//!
//! Owns: reading a process's listening TCP sockets from `/proc`; [`ClosedPort`], a port held
//! without listening (connections to it are refused until the test says otherwise); the
//! leased band.
//!
//! Must not: hand out a port it has released, or one of the instance port ranges the `pug`
//! binary's tests give pug (21000–28999 and 41000–41099).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::RangeInclusive;

/// The TCP addresses process `pid` listens on (Linux: its socket fds matched with
/// `/proc/<pid>/net/tcp{,6}`), in no particular order; empty when the process is gone.
pub fn listening_addrs(pid: u32) -> Vec<SocketAddr> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let inodes: HashSet<String> = fds
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            let t = target.to_str()?;
            Some(t.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let mut out = Vec::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        out.extend(text.lines().skip(1).filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            const LISTEN: &str = "0A";
            (cols.get(3) == Some(&LISTEN) && inodes.contains(*cols.get(9)?))
                .then(|| parse_proc_addr(cols[1]))
                .flatten()
        }));
    }
    out
}

/// `0100007F:1F90`, as `/proc/net/tcp` prints an address: IPv4 (or IPv6's four 32-bit words)
/// as the hex of the `u32` in memory (so its bytes in native order), then the port in hex.
fn parse_proc_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |w: &str| u32::from_str_radix(w, 16).ok().map(u32::to_ne_bytes);
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(ip)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_mut(4).enumerate() {
                chunk.copy_from_slice(&word(&ip[i * 8..i * 8 + 8])?);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// A loopback port bound but not listening: nobody else can bind it, and connecting to it is
/// refused, until [`ClosedPort::listen`] opens it. For "unreachable first, reachable later".
pub struct ClosedPort {
    socket: socket2::Socket,
    port: u16,
}

impl ClosedPort {
    pub fn new() -> Self {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("a TCP socket");
        socket
            .bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())
            .expect("bind 127.0.0.1:0");
        let port = socket
            .local_addr()
            .expect("the bound address")
            .as_socket()
            .expect("an IP address")
            .port();
        Self { socket, port }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Starts listening on the port (connections are accepted by the kernel from now on).
    pub fn listen(self) -> std::net::TcpListener {
        self.socket.listen(16).expect("listen");
        self.socket.into()
    }
}

impl Default for ClosedPort {
    fn default() -> Self {
        Self::new()
    }
}

/// The band leases come from: below Linux's default ephemeral range (32768–60999), apart from
/// the tests' instance port ranges.
pub const LEASED_PORTS: RangeInclusive<u16> = 15000..=19999;

/// A loopback port only this test uses, for as long as it holds the lease (see the module doc).
/// The server under test binds it itself (and may bind it again after a restart).
pub struct PortLease {
    port: u16,
    _lock: nix::fcntl::Flock<std::fs::File>,
}

impl PortLease {
    /// Leases a port of [`LEASED_PORTS`] that no other lease holds and nothing listens on.
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join("pug-test-ports");
        std::fs::create_dir_all(&dir).expect("the port lease directory");
        let (first, last) = (*LEASED_PORTS.start(), *LEASED_PORTS.end());
        let count = u32::from(last - first) + 1;
        // Processes start at different ports, so concurrent tests rarely try the same lock.
        let offset = std::process::id() % count;
        for i in 0..count {
            let port = first + ((offset + i) % count) as u16;
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(dir.join(port.to_string()))
                .expect("a port lease file");
            let Ok(lock) =
                nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
            else {
                continue;
            };
            // Held by nobody in this scheme; something outside it may still listen there.
            if std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
                return Self { port, _lock: lock };
            }
        }
        panic!("every port of {LEASED_PORTS:?} is leased or taken");
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Default for PortLease {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_endian = "little")] // the vectors are as an x86 or arm64 kernel prints them
    fn proc_addresses_parse() {
        for (text, want) in [
            ("0100007F:1F90", "127.0.0.1:8080"),
            ("00000000:0050", "0.0.0.0:80"),
            ("00000000000000000000000001000000:0016", "[::1]:22"),
            (
                "0000000000000000FFFF00000100007F:1F90",
                "[::ffff:127.0.0.1]:8080",
            ),
        ] {
            assert_eq!(parse_proc_addr(text), Some(want.parse().unwrap()), "{text}");
        }
        assert_eq!(parse_proc_addr("nonsense"), None);
    }

    #[test]
    fn a_listener_of_this_process_is_found() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        assert!(listening_addrs(std::process::id()).contains(&addr));
        drop(l);
        assert!(!listening_addrs(std::process::id()).contains(&addr));
    }

    #[test]
    fn a_closed_port_refuses_until_it_listens() {
        let port = ClosedPort::new();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port.port()));
        assert!(std::net::TcpStream::connect(addr).is_err());
        assert!(
            std::net::TcpListener::bind(addr).is_err(),
            "the port is held"
        );
        let _listener = port.listen();
        assert!(std::net::TcpStream::connect(addr).is_ok());
    }

    #[test]
    fn leases_are_distinct_and_bindable() {
        let a = PortLease::new();
        let b = PortLease::new();
        assert_ne!(a.port(), b.port());
        assert!(LEASED_PORTS.contains(&a.port()));
        std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, a.port())).unwrap();
    }
}
