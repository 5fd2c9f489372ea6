//! What the handover socket refuses: descriptors that are not the listening TCP
//! sockets described, access by others even with umask 0, and a process of another
//! user.

use super::*;

/// Plays an old mqgate process on `sock`: accepts one connection, reads what the new
/// process asks (if it asks within 2 s), sends `message` with `fd` attached, and returns
/// what the new process answers before it closes (empty: it did not confirm).
fn fake_old_process(
    sock: &std::path::Path,
    message: String,
    fd: std::os::fd::OwnedFd,
) -> std::thread::JoinHandle<Vec<u8>> {
    use std::io::IoSlice;
    use std::mem::MaybeUninit;
    let listener = std::os::unix::net::UnixListener::bind(sock).expect("bind the fake socket");
    listener.set_nonblocking(true).expect("non-blocking");
    std::thread::spawn(move || {
        let end = Instant::now() + Duration::from_secs(20);
        let mut conn = loop {
            match listener.accept() {
                Ok((c, _)) => break c,
                Err(_) if Instant::now() < end => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => panic!("nobody connected to the fake handover socket: {e}"),
            }
        };
        conn.set_nonblocking(false).expect("blocking");
        conn.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let mut request = [0u8; 256];
        let _ = conn.read(&mut request);
        let fds = [std::os::fd::AsFd::as_fd(&fd)];
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut cmsg = rustix::net::SendAncillaryBuffer::new(&mut space);
        assert!(cmsg.push(rustix::net::SendAncillaryMessage::ScmRights(&fds)));
        rustix::net::sendmsg(
            &conn,
            &[IoSlice::new(message.as_bytes())],
            &mut cmsg,
            rustix::net::SendFlags::empty(),
        )
        .expect("send the descriptor");
        conn.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut answer = Vec::new();
        let _ = conn.read_to_end(&mut answer);
        answer
    })
}

/// Descriptors received over the handover socket are used only if they are listening
/// TCP sockets bound to the address they are described with; anything else makes the
/// new process refuse the whole handover and exit 1 without confirming, so the old
/// process keeps serving.
#[test]
fn handover_refuses_descriptors_that_are_not_the_listening_tcp_sockets_described() {
    use std::os::fd::OwnedFd;
    let dir = tempdir();
    let sock = dir.path().join(HANDOVER_SOCK);
    let listen = free_port();
    let described: std::net::SocketAddr = ([127, 0, 0, 1], listen).into();
    let message = format!(
        "{{\"version\":2,\"listeners\":[{{\"name\":\"mqtt\",\"bind\":\"{described}\"}}]}}\n"
    );
    let tcp = |listen: bool| -> OwnedFd {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        s.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .expect("bind");
        if listen {
            s.listen(16).expect("listen");
        }
        s.into()
    };
    let udp = || -> OwnedFd {
        std::net::UdpSocket::bind(described)
            .expect("bind udp")
            .into()
    };
    let peer = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let connected = || -> OwnedFd {
        std::net::TcpStream::connect(peer.local_addr().expect("addr"))
            .expect("connect")
            .into()
    };
    let not_a_socket = || -> OwnedFd { std::fs::File::open("/dev/null").expect("open").into() };
    let cases: Vec<(&str, OwnedFd, &str)> = vec![
        ("a file", not_a_socket(), "not a socket"),
        ("a UDP socket", udp(), "not a stream socket"),
        (
            "a TCP socket that is not listening",
            tcp(false),
            "not listening",
        ),
        ("a connected TCP socket", connected(), "not listening"),
        (
            "a listening TCP socket on another port",
            tcp(true),
            "bound to 127.0.0.1:",
        ),
    ];
    for (what, fd, why) in cases {
        let _ = std::fs::remove_file(&sock);
        let old = fake_old_process(&sock, message.clone(), fd);
        let cfg = dir.path().join("new.toml");
        std::fs::write(&cfg, brokerless_config(free_port(), listen)).expect("write config");
        let mut new = std::process::Command::new(env!("CARGO_BIN_EXE_mqgate"))
            .args(["run", "-c"])
            .arg(&cfg)
            .arg("--handover")
            .arg(&sock)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start mqgate");
        let code = wait_exit(&mut new, Duration::from_secs(20));
        if code.is_none() {
            let _ = new.kill();
            let _ = new.wait();
        }
        let mut stderr = String::new();
        if let Some(mut e) = new.stderr.take() {
            let _ = e.read_to_string(&mut stderr);
        }
        assert_eq!(code, Some(1), "{what}: the new process exits 1: {stderr}");
        assert!(
            stderr.contains("not a listening TCP socket") && stderr.contains(why),
            "{what}: refused with {why:?}: {stderr}"
        );
        let answer = old.join().expect("fake old process");
        assert!(
            answer.is_empty(),
            "{what}: the new process confirmed: {:?}",
            String::from_utf8_lossy(&answer)
        );
    }
}

/// The handover socket is never reachable with the umask's permissions: it is bound
/// inside a private 0700 directory, set to 0600 there and only then renamed to PATH.
/// Checked with a umask of 0 (sockets would be created 0777) by watching every entry
/// created in PATH's directory: nothing but a directory is ever created there, and the
/// socket arrives by a rename, already 0600.
#[test]
fn handover_socket_is_never_accessible_to_others_even_with_umask_0() {
    use notify::{EventKind, Watcher as _};
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let dir = tempdir();
    let run = dir.path().join("run");
    std::fs::create_dir(&run).expect("mkdir run");
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o777)).expect("chmod run");
    let sock = run.join(HANDOVER_SOCK);
    let (tx, rx) = std::sync::mpsc::channel();
    let mut watcher = notify::recommended_watcher(tx).expect("watcher");
    watcher
        .watch(&run, notify::RecursiveMode::NonRecursive)
        .expect("watch run");
    let cfg = dir.path().join("gate.toml");
    let admin = free_port();
    std::fs::write(&cfg, brokerless_config(admin, free_port())).expect("write config");
    let log = std::fs::File::create(dir.path().join("gate.log")).expect("log");
    let _gate = KillOnDrop(
        std::process::Command::new("sh")
            .arg("-c")
            .arg("umask 000 && exec \"$0\" \"$@\"")
            .arg(env!("CARGO_BIN_EXE_mqgate"))
            .args(["run", "-c"])
            .arg(&cfg)
            .arg("--handover")
            .arg(&sock)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start mqgate"),
    );
    let mut events = Vec::new();
    let end = Instant::now() + Duration::from_secs(20);
    while !events
        .iter()
        .any(|e: &notify::Event| e.paths.contains(&sock))
    {
        let left = end.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Ok(e)) => events.push(e),
            Ok(Err(e)) => panic!("watch error: {e}"),
            Err(_) => panic!(
                "the handover socket did not appear; events: {events:?}; log:\n{}",
                std::fs::read_to_string(dir.path().join("gate.log")).unwrap_or_default()
            ),
        }
    }
    for e in &events {
        if let EventKind::Create(kind) = e.kind {
            assert_eq!(
                kind,
                notify::event::CreateKind::Folder,
                "{:?} was created directly in the socket's directory, with the umask's mode: {events:?}",
                e.paths
            );
        }
    }
    let meta = std::fs::symlink_metadata(&sock).expect("stat the socket");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "socket mode");
    wait_until(
        Duration::from_secs(5),
        "only the socket is left in its directory",
        || {
            std::fs::read_dir(&run)
                .map(|d| d.count() == 1)
                .unwrap_or(false)
        },
    );
}

/// A process of another user (uid 65534) that can reach the handover socket (here its
/// mode was loosened to 0666 by hand) is refused on its credentials (SO_PEERCRED) and
/// gets nothing; the old process keeps serving and still hands over to the real one.
/// Needs root (to run the intruder as another user); skipped otherwise.
#[test]
fn handover_refuses_a_process_of_another_user() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: running a process as another user needs root");
        return;
    }
    let dir = tempdir();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod dir");
    let sock = dir.path().join(HANDOVER_SOCK);
    let sock_arg = sock.display().to_string();
    let listen = free_port();
    let admin = free_port();
    let mut old = Gate::start_args(
        dir.path(),
        "gate-old",
        &brokerless_config(admin, listen),
        admin,
        &["--handover", &sock_arg],
    );
    wait_until(Duration::from_secs(10), "handover socket file", || {
        sock.exists()
    });
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).expect("chmod sock");

    let cfg = dir.path().join("intruder.toml");
    std::fs::write(&cfg, brokerless_config(free_port(), listen)).expect("write config");
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).expect("chmod cfg");
    let intruder = std::process::Command::new(env!("CARGO_BIN_EXE_mqgate"))
        .args(["run", "-c"])
        .arg(&cfg)
        .arg("--handover")
        .arg(&sock)
        .uid(65534)
        .gid(65534)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut intruder = match intruder {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            eprintln!(
                "skipped: uid 65534 cannot run {}: {e}",
                env!("CARGO_BIN_EXE_mqgate")
            );
            return;
        }
        Err(e) => panic!("start the intruder: {e}"),
    };
    let code = wait_exit(&mut intruder, Duration::from_secs(20));
    if code.is_none() {
        let _ = intruder.kill();
        let _ = intruder.wait();
    }
    let mut stderr = String::new();
    if let Some(mut e) = intruder.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    assert_eq!(
        code,
        Some(1),
        "the intruder gets nothing and fails: {stderr}"
    );
    assert!(
        !stderr.contains("listening socket received"),
        "the intruder received sockets: {stderr}"
    );
    old.wait_log("handover: refused a connection from uid 65534");

    let admin2 = free_port();
    let _new = Gate::start_args(
        dir.path(),
        "gate-new",
        &brokerless_config(admin2, listen),
        admin2,
        &["--handover", &sock_arg],
    );
    assert_eq!(
        old.wait_exit(Duration::from_secs(20)),
        Some(0),
        "the old process still hands over to its own user's process"
    );
}
