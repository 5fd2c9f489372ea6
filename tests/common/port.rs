//! Free TCP ports for tests and benchmarks (also included by
//! `examples/peers_bench.rs`).

use std::net::TcpListener;

/// A TCP port on 127.0.0.1 that nothing listens on and that stays free until the
/// caller binds it.
///
/// Asking the kernel for port 0 and closing the socket is racy: the port comes from
/// the ephemeral range, so between the pick and the real bind any outgoing connection
/// (a peer link, a health check, a client) may get it as its source port, and the
/// bind then fails with "address in use". Ports are therefore handed out from below
/// the ephemeral range (`net.ipv4.ip_local_port_range`), which the kernel never picks
/// on its own, walking from a per-process random start so that no port is given out
/// twice by this process, and each is checked by binding it once.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::OnceLock;
    static RANGE: OnceLock<(u32, u32)> = OnceLock::new();
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let &(lo, hi) = RANGE.get_or_init(|| {
        let eph_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
            .unwrap_or(32768);
        let seed = std::process::id()
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
        NEXT.store(seed, Ordering::Relaxed);
        (10_000, eph_low)
    });
    if hi <= lo + 1000 {
        // An unusual ephemeral range leaves no room below it: fall back to port 0.
        let l = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
        return l.local_addr().expect("local addr").port();
    }
    for _ in 0..(hi - lo) {
        let port = (lo + NEXT.fetch_add(1, Ordering::Relaxed) % (hi - lo)) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free TCP port in {lo}..{hi}");
}
