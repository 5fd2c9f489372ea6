//! A DNS server for tests whose answer the test changes: A records (TTL 0) for any
//! name, from a list the test holds; other types get an empty answer. It listens on
//! UDP port 53 of a random loopback address (127.a.b.c), because `/etc/resolv.conf`
//! cannot name a port; mqgate processes see it through a `resolv.conf` bind-mounted in
//! their own mount namespace ([`crate::common::Gate::start_resolving`]).

use std::net::{Ipv4Addr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct Dns {
    answer: Arc<Mutex<Vec<Ipv4Addr>>>,
    /// A `resolv.conf` naming this server.
    pub resolv_conf: PathBuf,
}

impl Dns {
    /// Start on a free loopback address; `None` if port 53 cannot be bound (not root).
    pub fn start(dir: &Path, answer: &[Ipv4Addr]) -> Option<Dns> {
        let sock = (0..50).find_map(|_| {
            let r: [u8; 3] = rand::random();
            let ip = Ipv4Addr::new(127, r[0].max(10), r[1], r[2].clamp(2, 254));
            UdpSocket::bind((ip, 53)).ok()
        })?;
        let addr = sock.local_addr().ok()?;
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .ok()?;
        let answer = Arc::new(Mutex::new(answer.to_vec()));
        let shared = answer.clone();
        std::thread::spawn(move || serve(sock, shared));
        let resolv_conf = dir.join("resolv.conf");
        std::fs::write(
            &resolv_conf,
            format!("nameserver {}\noptions timeout:1 attempts:2\n", addr.ip()),
        )
        .ok()?;
        Some(Dns {
            answer,
            resolv_conf,
        })
    }

    /// From now on, answer with `ips`.
    pub fn set(&self, ips: &[Ipv4Addr]) {
        *self.answer.lock().unwrap_or_else(|p| p.into_inner()) = ips.to_vec();
    }
}

fn serve(sock: UdpSocket, answer: Arc<Mutex<Vec<Ipv4Addr>>>) {
    let mut buf = [0u8; 512];
    // Ends when the test process does (the thread holds only the socket).
    loop {
        let Ok((n, from)) = sock.recv_from(&mut buf) else {
            if Arc::strong_count(&answer) == 1 {
                return; // the Dns handle was dropped
            }
            continue;
        };
        let q = &buf[..n];
        if n < 17 {
            continue;
        }
        let mut i = 12;
        while i < n && q[i] != 0 {
            i += 1 + q[i] as usize;
        }
        let qend = i + 5;
        if qend > n {
            continue;
        }
        let qtype = u16::from_be_bytes([q[qend - 4], q[qend - 3]]);
        let ips = if qtype == 1 {
            answer.lock().unwrap_or_else(|p| p.into_inner()).clone()
        } else {
            Vec::new()
        };
        let mut r = Vec::with_capacity(64 + 16 * ips.len());
        r.extend_from_slice(&q[..2]);
        r.extend_from_slice(&[0x81, 0x80, 0, 1]);
        r.extend_from_slice(&(ips.len() as u16).to_be_bytes());
        r.extend_from_slice(&[0, 0, 0, 0]);
        r.extend_from_slice(&q[12..qend]);
        for ip in ips {
            r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4]);
            r.extend_from_slice(&ip.octets());
        }
        let _ = sock.send_to(&r, from);
    }
}
