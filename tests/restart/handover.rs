//! `mqgate run --handover`: the listening sockets pass to the new process with no
//! connect lost, a new process that cannot start leaves the old one serving, and a
//! silent client on the handover socket does not block a handover.

use super::*;

/// `--handover`: each new process takes the listening socket from the running one,
/// which then shuts down by itself. Two restarts in a row under steady connects; not
/// one connect may fail, whatever `tcp_migrate_req` says.
#[test]
fn handover_of_listening_sockets_loses_no_connects() {
    let h = Handover::new();
    let mut old = h.start("gate-1", free_port());
    let traffic = Traffic::start(h.listen, 4);
    for i in 2..=3 {
        let base = traffic.ok();
        wait_until(Duration::from_secs(10), "steady traffic", || {
            traffic.ok() > base + 50
        });
        // The second handover uses the very same config (admin address included,
        // bound with SO_REUSEPORT next to the old one's): one command line for every
        // restart.
        let admin = if i == 2 { free_port() } else { old.admin_port };
        let new = h.start(&format!("gate-{i}"), admin);
        assert_eq!(
            old.wait_exit(Duration::from_secs(20)),
            Some(0),
            "the old process shuts down by itself after the handover, exit 0"
        );
        assert!(old
            .log_text()
            .contains("handover: the new process runs on our sockets"));
        assert!(new
            .log_text()
            .contains("handover: listening socket received"));
        let base = traffic.ok();
        wait_until(Duration::from_secs(10), "traffic continues", || {
            traffic.ok() > base + 100
        });
        assert!(new.metric("mqgate_connections_total", &[]) > 100.0);
        old = new;
    }
    let (ok, failed, errors) = traffic.finish();
    eprintln!(
        "handover: {ok} connects, {failed} failed: {:?}",
        &errors[..errors.len().min(5)]
    );
    assert_eq!(
        failed, 0,
        "failed connects during the handovers: {errors:?}"
    );
    assert_eq!(old.stop(), Some(0));
    assert!(
        !h.sock.exists(),
        "the last process removes its handover socket file"
    );
}

/// A new process that cannot start (here: a second listener on a port taken by
/// another program) exits with an error before confirming; the old process keeps its
/// sockets and clients, and still hands over to the next, correct, process.
#[test]
fn failed_handover_leaves_the_old_process_serving() {
    let h = Handover::new();
    let (dir, sock, listen, admin) = (h.dir.path(), &h.sock, h.listen, free_port());
    let mut old = h.start("gate-old", admin);
    let good = config(admin, listen, &h.broker, "");

    let blocker = std::net::TcpListener::bind("127.0.0.1:0").expect("bind blocker");
    let taken = blocker.local_addr().expect("blocker addr").port();
    let bad_toml = dir.join("bad.toml");
    std::fs::write(
        &bad_toml,
        format!(
            "{good}\n[[listeners]]\nname = \"second\"\nbind = \"127.0.0.1:{taken}\"\ncluster = \"brokers\"\n"
        ),
    )
    .expect("write bad config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mqgate"))
        .args(["run", "-c"])
        .arg(&bad_toml)
        .arg("--handover")
        .arg(sock)
        .output()
        .expect("run the failing process");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "the new process fails: {stderr}"
    );
    assert!(stderr.contains("cannot bind"), "{stderr}");

    old.wait_log("did not confirm");
    session(listen, "still-served", false).expect("the old process still serves clients");
    assert!(
        sock.exists(),
        "the old process still serves the handover socket"
    );

    let _new = h.start("gate-new", free_port());
    assert_eq!(old.wait_exit(Duration::from_secs(20)), Some(0));
    session(listen, "after-handover", false).expect("the new process serves clients");
    drop(blocker);
}

/// A client that connects to the handover socket and says nothing used to receive the
/// listening sockets at once and hold the old process for two minutes, so the real new
/// process timed out and failed. Now the old process sends nothing until a client asks,
/// drops one that does not ask within a couple of seconds, and hands over to the real one.
#[test]
fn silent_client_on_the_handover_socket_does_not_block_a_handover() {
    let h = Handover::new();
    let mut old = h.start("gate-1", free_port());
    let mut silent = std::os::unix::net::UnixStream::connect(&h.sock).expect("silent client");
    let new = h.start("gate-2", free_port());
    assert_eq!(
        old.wait_exit(Duration::from_secs(20)),
        Some(0),
        "the old process hands over to the real new process and exits"
    );
    assert!(new
        .log_text()
        .contains("handover: listening socket received"));
    assert!(
        old.log_text().contains("sent no request"),
        "the silent client is logged as dropped"
    );
    session(h.listen, "after-handover", false).expect("the new process serves clients");
    // The silent client was given nothing, descriptors included: just the end.
    silent
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut got = Vec::new();
    silent
        .read_to_end(&mut got)
        .expect("read the silent client");
    assert!(
        got.is_empty(),
        "the silent client received {:?}",
        String::from_utf8_lossy(&got)
    );
}
