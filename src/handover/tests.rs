use super::*;

fn bound(addr: &str) -> socket2::Socket {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .unwrap_or_else(|e| panic!("{e}"));
    let addr: SocketAddr = addr.parse().unwrap_or_else(|e| panic!("{e}"));
    s.bind(&addr.into()).unwrap_or_else(|e| panic!("{e}"));
    s
}

#[test]
fn only_listening_tcp_sockets_on_their_address_are_taken() {
    let listening = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let addr = listening.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let sock = listening_socket(listening.into(), addr).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(sock.local_addr().ok(), Some(addr));
    // Port 0 in the description: any port of that address.
    let any: SocketAddr = ([127, 0, 0, 1], 0).into();
    assert!(listening_socket(sock.into(), any).is_ok());

    let why = |fd: OwnedFd, bind: SocketAddr| match listening_socket(fd, bind) {
        Ok(_) => panic!("taken"),
        Err(e) => e.to_string(),
    };
    let file = std::fs::File::open("/dev/null").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(why(file.into(), addr), "not a socket");
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(why(udp.into(), addr), "not a stream socket");
    assert_eq!(why(bound("127.0.0.1:0").into(), any), "not listening");
    let v6: SocketAddr = "[::1]:0".parse().unwrap_or_else(|e| panic!("{e}"));
    let other = bound("127.0.0.1:0");
    other.listen(1).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(why(other.into(), v6), "not an IPv6 socket");
    let other = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let local = other.local_addr().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        why(other.into(), addr),
        format!("bound to {local}, not {addr}")
    );
}

#[test]
fn errors_say_what_and_why_on_one_line() {
    let e = HandoverError::NotListening {
        listener: "mqtt".into(),
        bind: ([127, 0, 0, 1], 1883).into(),
        why: SocketMismatch::NotListening,
    };
    assert_eq!(
        e.to_string(),
        "handover: the socket received for listener `mqtt` (127.0.0.1:1883) is not a \
         listening TCP socket bound to that address; refusing the handover: not listening"
    );
    // Through anyhow (as `run` reports it) the cause is not repeated.
    assert_eq!(
        format!("{:#}", anyhow::Error::from(e))
            .matches("not listening")
            .count(),
        1
    );
}

#[test]
fn messages_of_other_versions_are_refused() {
    let path = Path::new("/run/mqgate.sock");
    let old = br#"[{"name":"mqtt","bind":"127.0.0.1:1883"}]"#;
    assert!(matches!(
        parse_message(path, old),
        Err(HandoverError::OldProtocol { .. })
    ));
    let newer = br#"{"version":3,"listeners":[]}"#;
    assert!(matches!(
        parse_message(path, newer),
        Err(HandoverError::Protocol { theirs: 3, .. })
    ));
    let e = parse_message(path, b"{").err().map(|e| e.to_string());
    assert!(
        e.as_deref()
            .is_some_and(|e| e.starts_with("handover message from /run/mqgate.sock: ")),
        "{e:?}"
    );
    let ok = br#"{"version":2,"listeners":[{"name":"mqtt","bind":"127.0.0.1:1883"}]}"#;
    assert!(parse_message(path, ok).is_ok_and(|m| m.listeners.len() == 1));
}

/// The whole exchange in one process: `serve` hands the listening socket to `take`,
/// which confirms; the serving side is then told to shut down.
#[tokio::test]
async fn sockets_are_handed_over_and_confirmed() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = tmp.path().join("handover.sock");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let shutdown = CancellationToken::new();
    let stop = CancellationToken::new();
    serve(
        path.clone(),
        move || match listener.try_clone() {
            Ok(l) => vec![("mqtt".to_string(), addr, l)],
            Err(_) => Vec::new(),
        },
        shutdown.clone(),
        stop.clone(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mode = std::fs::metadata(&path)
        .unwrap_or_else(|e| panic!("{e}"))
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let taker = path.clone();
    let mut inherited = tokio::task::spawn_blocking(move || take(&taker))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("{e}"));
    let sock = inherited
        .sockets
        .get(&addr)
        .unwrap_or_else(|| panic!("no socket for {addr}"));
    assert_eq!(sock.local_addr().ok(), Some(addr));
    assert!(
        !shutdown.is_cancelled(),
        "shut down before the confirmation"
    );
    inherited.confirm();
    tokio::time::timeout(Duration::from_secs(10), shutdown.cancelled())
        .await
        .unwrap_or_else(|_| panic!("not told to shut down"));
    // Nobody serving: no sockets, no error.
    let none = take(&tmp.path().join("nobody.sock")).unwrap_or_else(|e| panic!("{e}"));
    assert!(none.sockets.is_empty());
}
