//! Unit tests of the client commands' pieces.

use super::*;

#[test]
fn admin_url_from_config() {
    assert_eq!(
        admin_url("0.0.0.0:9200").as_deref(),
        Some("http://127.0.0.1:9200")
    );
    assert_eq!(
        admin_url("[::1]:9100").as_deref(),
        Some("http://[::1]:9100")
    );
    assert_eq!(admin_url("[::]:9100").as_deref(), Some("http://[::1]:9100"));
    assert_eq!(admin_url("localhost"), None);
}

#[test]
fn target_from_flags_config_and_fallback() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let dir = tmp.path();
    let cfg = dir.join("gw.toml");
    std::fs::write(dir.join("admin.token"), "s3cret\n").unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        &cfg,
        "[admin]\nbind = \"0.0.0.0:9321\"\ntoken_file = \"admin.token\"\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    // -c FILE: its bind, its token file (relative to the file's directory), no note.
    let t = target(None, Some(&cfg), None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(t.base, "http://127.0.0.1:9321");
    assert_eq!(t.token.as_deref(), Some("s3cret"));
    assert_eq!(t.note, None);
    // MQGATE_ADMIN_TOKEN and --admin win.
    let t = target(
        Some("http://10.0.0.1:9100".into()),
        Some(&cfg),
        Some("env".into()),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (t.base.as_str(), t.token.as_deref()),
        ("http://10.0.0.1:9100", Some("env"))
    );
    // An unreadable token file is not an error until the API asks for a token.
    std::fs::write(&cfg, "[admin]\ntoken_file = \"missing.token\"\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let t = target(None, Some(&cfg), None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(t.base, DEFAULT_ADMIN, "no bind: the default bind");
    assert_eq!(t.token, None);
    assert!(t
        .token_problem
        .map(|p| p.to_string())
        .is_some_and(|p| p.contains("missing.token") && p.contains(TOKEN_ENV)));
    // A -c FILE that is missing or broken is an error naming it.
    let e = target(None, Some(&dir.join("nope.toml")), None).map_err(|e| e.to_string());
    assert!(e.err().is_some_and(|e| e.contains("nope.toml")));
    std::fs::write(&cfg, "[admin\n").unwrap_or_else(|e| panic!("{e}"));
    let e = target(None, Some(&cfg), None).map_err(|e| e.to_string());
    assert!(e
        .err()
        .is_some_and(|e| e.contains("gw.toml") && e.contains("not valid TOML")));
}

#[test]
fn urls() {
    let a = Api::new("http://127.0.0.1:9100/", None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(a.host, "127.0.0.1:9100");
    assert_eq!(a.prefix, "");
    let a = Api::new("localhost:9100/gw", None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (a.host.as_str(), a.prefix.as_str()),
        ("localhost:9100", "/gw")
    );
    let a = Api::new("http://[::1]:9100", None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(a.host, "[::1]:9100");
    let a = Api::new("http://admin.internal", None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(a.host, "admin.internal:80");
    assert!(Api::new("https://x:1", None).is_err());
    assert!(Api::new("ftp://x:1", None).is_err());
}

#[test]
fn segments_are_encoded() {
    assert_eq!(encode("dev/1 a"), "dev%2F1%20a");
    assert_eq!(encode("plain-id_1.x"), "plain-id_1.x");
}

#[test]
fn tables_align() {
    let t = table(&["A", "LONG"], &[vec!["xxxx".into(), "y".into()]], "  ");
    assert_eq!(t, "  A     LONG\n  xxxx  y\n");
}

/// A one-shot HTTP server on loopback: answers the first request with `answer`
/// and returns that request (head and body) as it arrived.
fn fake_api(answer: &'static str) -> (String, std::thread::JoinHandle<String>) {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let base = format!(
        "http://{}",
        l.local_addr().unwrap_or_else(|e| panic!("{e}"))
    );
    let server = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap_or_else(|e| panic!("{e}"));
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        // The head, then as many body bytes as it announces.
        let complete = |got: &[u8]| {
            let text = String::from_utf8_lossy(got);
            text.split_once("\r\n\r\n").is_some_and(|(head, body)| {
                let len = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length: ")
                            .map(str::to_string)
                    })
                    .and_then(|n| n.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                body.len() >= len
            })
        };
        while !complete(&got) {
            let n = s.read(&mut buf).unwrap_or_else(|e| panic!("{e}"));
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        s.write_all(answer.as_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
        String::from_utf8_lossy(&got).into_owned()
    });
    (base, server)
}

fn sticky_get() -> Request {
    Request::Sticky {
        action: "get".into(),
        cluster: "brokers".into(),
        key: "dev/1".into(),
    }
}

#[test]
fn chunked_answers_and_the_request_sent() {
    let (base, server) = fake_api(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n\
         10\r\n{\"key\":\"dev/1\",\"\r\n\
         1e\r\nnode\":\"node2\",\"expires_in_secs\r\n\
         5\r\n\":42}\r\n0\r\n\r\n",
    );
    let out = run_client(&sticky_get(), &format!("{base}/gw/"), Some("s3cret"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out, "KEY    NODE   EXPIRES IN\ndev/1  node2  42s\n");
    let req = server.join().unwrap_or_else(|_| panic!("server"));
    let host = base.trim_start_matches("http://");
    assert!(
        req.starts_with("GET /gw/api/v1/clusters/brokers/sticky/dev%2F1 HTTP/1.1\r\n"),
        "{req}"
    );
    let req = req.to_ascii_lowercase();
    for h in [
        format!("host: {host}\r\n"),
        "connection: close\r\n".to_string(),
        "authorization: bearer s3cret\r\n".to_string(),
        "accept: application/json\r\n".to_string(),
        format!("user-agent: mqgate/{}\r\n", env!("CARGO_PKG_VERSION")),
    ] {
        assert!(req.contains(&h), "{h:?} missing in {req}");
    }
    assert!(!req.contains("content-type"), "{req}");
}

#[test]
fn changes_send_json() {
    let (base, server) = fake_api(
        "HTTP/1.1 200 OK\r\nContent-Length: 88\r\n\r\n\
         {\"cluster\":\"brokers\",\"node\":\"n1\",\"state\":\"maint\",\"previous\":\"ready\",\"sessions_closed\":3}",
    );
    let req = Request::Node {
        state: "maint".into(),
        cluster: "brokers".into(),
        node: "n1".into(),
    };
    let out = run_client(&req, &base, None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        out,
        "cluster brokers node n1: ready -> maint (takes no clients; closed 3 session(s))\n"
    );
    let req = server.join().unwrap_or_else(|_| panic!("server"));
    assert!(req.starts_with("PUT /api/v1/clusters/brokers/nodes/n1/state HTTP/1.1\r\n"));
    let lower = req.to_ascii_lowercase();
    assert!(
        lower.contains("content-type: application/json\r\n"),
        "{req}"
    );
    assert!(!lower.contains("authorization"), "{req}");
    assert!(req.ends_with("\r\n\r\n{\"state\":\"maint\"}"), "{req}");
}

#[test]
fn refusals_are_one_line() {
    let cases: [(&'static str, Option<&str>, &str); 5] = [
        (
            "HTTP/1.1 401 Unauthorized\r\nContent-Length: 26\r\n\r\n{\"error\":\"Bearer needed\"}\n",
            None,
            "the admin API needs a token: set MQGATE_ADMIN_TOKEN",
        ),
        (
            "HTTP/1.1 401 Unauthorized\r\nContent-Length: 25\r\n\r\n{\"error\":\"wrong token\"}\r\n",
            Some("x"),
            "the admin API refused the token in MQGATE_ADMIN_TOKEN: wrong token",
        ),
        (
            "HTTP/1.1 403 Forbidden\r\nContent-Length: 21\r\n\r\n{\"error\":\"bad Host\"}\n",
            Some("x"),
            "the admin API refused the change: bad Host",
        ),
        (
            "HTTP/1.1 404 Not Found\r\nContent-Length: 33\r\n\r\n{\"error\":\"no sticky entry\\nmore\"}",
            Some("x"),
            "no sticky entry",
        ),
        ("SSH-2.0-OpenSSH_9.2\r\n", Some("x"), " did not answer with HTTP"),
    ];
    for (answer, token, want) in cases {
        let (base, server) = fake_api(answer);
        let e = run_client(&sticky_get(), &base, token)
            .err()
            .map(|e| e.to_string());
        let _ = server.join();
        assert!(
            e.as_deref()
                .is_some_and(|e| e.contains(want) && !e.contains('\n')),
            "{e:?}: {want}"
        );
    }
    // The config's token could not be read: that is what the 401 says.
    let (base, server) = fake_api("HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n");
    let problem = TargetError::TokenEnv {
        var: "GW_TOKEN".into(),
    };
    let e = run_request(&sticky_get(), &base, None, Some(&problem)).err();
    let _ = server.join();
    assert!(e.is_some_and(|e| e.to_string()
        == format!("the admin API needs a token: [admin] token_env names GW_TOKEN, which is not set here; set it or {TOKEN_ENV}")));
}

#[test]
fn nobody_listening() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let addr = l.local_addr().unwrap_or_else(|e| panic!("{e}"));
    drop(l);
    let e = run_client(&Request::Status, &format!("http://{addr}"), None)
        .err()
        .map(|e| e.to_string());
    assert!(
        e.as_deref().is_some_and(|e| e
            .starts_with(&format!("cannot reach the admin API at http://{addr} ("))
            && e.contains("is mqgate running?")
            && !e.contains('\n')),
        "{e:?}"
    );
}

#[tokio::test]
async fn not_inside_a_runtime() {
    let e = run_client(&Request::Status, "http://127.0.0.1:1", None).err();
    assert!(matches!(e, Some(ClientError::NestedRuntime)), "{e:?}");
}
