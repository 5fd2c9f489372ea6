//! `mqgate check` reports every error with file, line and key, and prints a summary of
//! a valid file.

use super::*;

#[test]
fn check_reports_every_error_with_file_line_and_key() {
    let dir = tempdir();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[limits]\nconnect_timeout = \"soon\"\n\n[[listeners]]\nname = \"mqtt\"\nbind = \"127.0.0.1:1883\"\n\
         cluster = \"nope\"\n\n[clusters.brokers]\nmode = \"dynsec\"\n\
         nodes = [ { name = \"n1\", address = \"127.0.0.1:1884\" } ]\n",
    )
    .expect("write");
    let out = mqgate(&["check", "-c", bad.to_str().expect("path")]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml:2:") && err.contains("limits.connect_timeout"),
        "{err}"
    );
    assert!(
        err.contains("bad.toml:7:") && err.contains("listeners[0].cluster"),
        "{err}"
    );
    assert!(err.contains("2 error(s)"), "{err}");

    let unknown = dir.path().join("unknown.toml");
    std::fs::write(&unknown, "[limits]\nmax_conections = 5\n").expect("write");
    let out = mqgate(&["check", "-c", unknown.to_str().expect("path")]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown.toml:2:") && err.contains("max_conections"),
        "{err}"
    );

    let missing = mqgate(&[
        "check",
        "-c",
        dir.path().join("nope.toml").to_str().expect("path"),
    ]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("nope.toml"));
}

#[test]
fn check_prints_a_summary_of_a_valid_file() {
    let dir = tempdir();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "[[listeners]]\nname = \"mqtt\"\nbind = \"127.0.0.1:1883\"\ncluster = \"brokers\"\n\n\
         [clusters.brokers]\nmode = \"full-sync\"\n\
         nodes = [ { name = \"n1\", address = \"127.0.0.1:1884\" }, { name = \"n2\", address = \"127.0.0.1:1885\" } ]\n",
    )
    .expect("write");
    let out = mqgate(&["check", "-c", good.to_str().expect("path")]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "OK",
        "mqtt",
        "127.0.0.1:1883",
        "brokers",
        "full-sync",
        "n1",
        "n2",
        "127.0.0.1:1885",
    ] {
        assert!(text.contains(want), "summary lacks {want:?}:\n{text}");
    }
    let v = mqgate(&["version"]);
    assert!(v.status.success());
    assert!(String::from_utf8_lossy(&v.stdout).contains(env!("CARGO_PKG_VERSION")));
}
