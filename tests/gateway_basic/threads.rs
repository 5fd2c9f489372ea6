//! Connection threads (`limits.threads`): unset leaves a CPU to each broker on this
//! host; N threads take sessions in turn, both sockets of a session on one thread.

use super::*;

/// The TCP sockets of process `pid`, by inode: (local port, remote port).
fn tcp_sockets(pid: u32) -> std::collections::HashMap<u64, (u16, u16)> {
    let mut out = std::collections::HashMap::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let port = |addr: &str| {
                addr.rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
            };
            if let (Some(l), Some(r), Some(Ok(ino))) = (
                f.get(1).and_then(|a| port(a)),
                f.get(2).and_then(|a| port(a)),
                f.get(9).map(|i| i.parse::<u64>()),
            ) {
                out.insert(ino, (l, r));
            }
        }
    }
    out
}

/// For each epoll instance of process `pid`: the inodes of the sockets in its set.
fn epoll_sets(pid: u32) -> Vec<Vec<u64>> {
    let socket_inode = |fd: &str| -> Option<u64> {
        let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
        let l = link.to_string_lossy().into_owned();
        l.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
    };
    let mut sets = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd")).expect("list fds") {
        let Ok(e) = e else { continue };
        let fd = e.file_name().to_string_lossy().into_owned();
        let is_epoll = std::fs::read_link(e.path())
            .map(|l| l.to_string_lossy().contains("eventpoll"))
            .unwrap_or(false);
        if !is_epoll {
            continue;
        }
        let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap_or_default();
        let members: Vec<u64> = info
            .lines()
            .filter_map(|l| l.strip_prefix("tfd:"))
            .filter_map(|rest| rest.split_whitespace().next())
            .filter_map(socket_inode)
            .collect();
        sets.push(members);
    }
    // tokio keeps two descriptors of each epoll instance (the driver's and a
    // duplicate for registrations): the same set twice.
    for s in &mut sets {
        s.sort_unstable();
    }
    sets.sort();
    sets.dedup();
    sets
}

/// The names of process `pid`'s connection threads, as `top -H` shows them.
fn connection_threads(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("list threads")
        .filter_map(|t| t.ok())
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .map(|c| c.trim().to_string())
        .filter(|c| c.starts_with("mqgate-conn-"))
        .collect()
}

/// `limits.threads` unset: one connection thread per CPU, less one for each broker
/// node on this host (loopback, `localhost`, or an address of one of its interfaces;
/// told apart by port, so the same node in two clusters or under two of this host's
/// addresses counts once), at least one; a node elsewhere takes none. The start-up log
/// says how many and why.
#[test]
fn unset_threads_leave_a_cpu_to_each_broker_on_this_host() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (p1, p2) = (free_port(), free_port());
    // This host's own non-loopback address, when it has one (the source address of a
    // route to a documentation address; UDP connect sends nothing).
    let own = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect("192.0.2.1:9").and(s.local_addr()))
        .ok()
        .map(|a| a.ip())
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified());
    let elsewhere = "198.51.100.1";
    assert!(
        std::net::UdpSocket::bind((elsewhere, 0)).is_err(),
        "{elsewhere} is an address of this host: the test needs one that is not"
    );
    let mut cases = vec![
        ("one loopback node", vec![format!("127.0.0.1:{p1}")], 1),
        (
            "two nodes on this host, one of them in two clusters",
            vec![format!("127.0.0.1:{p1}"), format!("localhost:{p2}")],
            2,
        ),
        (
            "one node named two ways on one port",
            vec![format!("localhost:{p1}"), format!("127.0.0.1:{p1}")],
            1,
        ),
        (
            "a node elsewhere (TEST-NET-2)",
            vec![format!("{elsewhere}:1883")],
            0,
        ),
    ];
    match own {
        Some(ip) => {
            cases.push((
                "a node on this host's own address",
                vec![format!("{ip}:{p1}")],
                1,
            ));
            cases.push((
                "a node on its own address and on loopback, and one more",
                vec![
                    format!("{ip}:{p1}"),
                    format!("127.0.0.1:{p1}"),
                    format!("{ip}:{p2}"),
                ],
                2,
            ));
        }
        None => eprintln!("no non-loopback address on this host: that case is left out"),
    }
    for (what, nodes, local) in cases {
        let dir = tempdir();
        let admin = free_port();
        let node_list: Vec<String> = nodes
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{{ name = \"n{i}\", address = \"{a}\" }}"))
            .collect();
        let toml = format!(
            "{}\n[[listeners]]\nname = \"mqtt\"\nbind = \"127.0.0.1:{}\"\ncluster = \"a\"\n\n\
             [clusters.a]\nmode = \"dynsec\"\nnodes = [ {} ]\n\n\
             [clusters.b]\nmode = \"dynsec\"\nnodes = [ {} ]\n",
            Gate::admin_section(admin),
            free_port(),
            node_list.join(", "),
            node_list[0],
        );
        let gate = Gate::start(dir.path(), "gate", &toml, admin);
        let want = cpus.saturating_sub(local).max(1);
        let names = connection_threads(gate.pid().expect("gateway pid"));
        assert_eq!(
            names.len(),
            want,
            "{what}: {cpus} CPUs, {local} broker node(s) on this host: connection threads {names:?}"
        );
        let log = gate.log_text();
        let line = log
            .lines()
            .find(|l| l.contains("connection threads"))
            .unwrap_or_else(|| panic!("{what}: no start-up line on connection threads:\n{log}"));
        assert!(
            line.contains(&format!("threads={want}"))
                && line.contains(&format!("broker_nodes_on_this_host={local}")),
            "{what}: start-up line {line:?}"
        );
    }
}

/// `limits.threads = N`: N connection threads (named, as `top -H` shows them), and
/// sessions are handed out in turn, each with both its sockets (client side and broker
/// side) in one thread's event loop. `threads = 0`: every session on the gateway's
/// own runtime, one event loop.
#[test]
fn connection_threads_take_sessions_in_turn_with_both_sockets_on_one_thread() {
    for (threads, want) in [(3usize, vec![4usize, 4, 4]), (0, vec![12])] {
        let dir = tempdir();
        let broker = Mosquitto::start("b1", dir.path());
        let (port, admin) = (free_port(), free_port());
        let toml = format!(
            "[limits]\nthreads = {threads}\n\n{}",
            basic_config(port, admin, "dynsec", &[&broker], "")
        );
        let gate = Gate::start(dir.path(), "gate", &toml, admin);
        gate.wait_node_up("b1");
        let pid = gate.pid().expect("gateway pid");
        let names = connection_threads(pid);
        assert_eq!(names.len(), threads, "connection threads: {names:?}");

        let mut sessions: Vec<_> = (0..6)
            .map(|i| raw_session(port, &format!("spread-{i}")))
            .collect();
        for s in &mut sessions {
            assert!(ping(s), "session answers through the gateway");
        }
        let broker_port = broker.port;
        // The gateway's ends of the 6 sessions: 6 accepted (local port = listener)
        // and 6 to the broker (remote port = broker). Health checks also connect to
        // the broker, from the gateway's own runtime, for a moment every 200 ms:
        // polled until a moment without one.
        let per_loop = || {
            let tcp = tcp_sockets(pid);
            let proxied = |ino: &u64| {
                tcp.get(ino)
                    .is_some_and(|&(l, r)| (l == port && r != 0) || r == broker_port)
            };
            let mut n: Vec<usize> = epoll_sets(pid)
                .iter()
                .map(|set| set.iter().filter(|i| proxied(i)).count())
                .filter(|&n| n > 0)
                .collect();
            n.sort_unstable();
            n
        };
        let mut seen = Vec::new();
        let found = (0..100).any(|_| {
            seen = per_loop();
            seen == want || {
                std::thread::sleep(Duration::from_millis(20));
                false
            }
        });
        assert!(
            found,
            "proxied sockets per event loop with threads = {threads}: {seen:?}, want {want:?}"
        );
        drop(sessions);
    }
}
