//! The `/status` page renders in a real browser (headless Chromium), shows the nodes,
//! their health and the leader, follows a leader change, and needs nothing from the
//! network. The screenshot is saved under `target/test-artifacts/`.

use crate::common::tools::CHROMIUM;
use crate::common::{http, tempdir, wait_until, Gate, Mosquitto};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

fn artifacts_dir() -> PathBuf {
    // CARGO_TARGET_TMPDIR is target/tmp; artifacts go next to it.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target dir")
        .join("test-artifacts");
    std::fs::create_dir_all(&dir).expect("create target/test-artifacts");
    dir
}

/// Run headless Chromium with `args` + `url`; returns stdout. Fails clearly when
/// Chromium is not installed (integration/test installs it), and kills it if it hangs.
fn chromium(profile: &Path, args: &[String], url: &str) -> String {
    let mut child = CHROMIUM
        .command()
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            "--window-size=1280,900",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let mut out = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let end = Instant::now() + Duration::from_secs(90);
    loop {
        match child.try_wait().expect("wait for chromium") {
            Some(st) => {
                assert!(st.success(), "chromium failed: {st}");
                break;
            }
            None if Instant::now() > end => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("chromium did not finish within 90s");
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    reader.join().expect("reader thread")
}

fn row<'a>(dom: &'a str, node: &str) -> &'a str {
    let start = dom
        .find(&format!("data-node=\"{node}\""))
        .unwrap_or_else(|| panic!("no row for {node} in:\n{dom}"));
    let end = dom[start..].find("</tr>").expect("end of row") + start;
    &dom[start..end]
}

fn leader_shown(dom: &str) -> String {
    let start = dom.find("class=\"leader-name\"").expect("leader shown");
    let tail = &dom[start..];
    let b = tail.find("badge").expect("badge");
    let gt = tail[b..].find('>').expect(">") + b + 1;
    let lt = tail[gt..].find('<').expect("<") + gt;
    tail[gt..lt].to_string()
}

#[test]
fn status_page_renders_in_chromium_and_follows_the_leader() {
    let dir = tempdir();
    let mut a = Mosquitto::start("node1", dir.path());
    let b = Mosquitto::start("node2", dir.path());
    let (gate, _listen) = Gate::basic(dir.path(), "full-sync", &[&a, &b]);
    let admin = gate.admin_port;
    wait_until(Duration::from_secs(10), "both nodes up", || {
        gate.metric("mqgate_node_up", &[]) == 2.0
    });

    // Served as self-contained HTML that refreshes itself.
    let (code, html) = http("GET", admin, "/status", None, None).expect("GET /status");
    assert_eq!(code, 200);
    assert!(html.contains("http-equiv=\"refresh\""), "no auto refresh");
    for external in ["src=", "<link", "<script", "url(", "@import"] {
        assert!(
            !html.contains(external),
            "page loads something ({external})"
        );
    }

    let profile = tempdir();
    let url = format!("http://127.0.0.1:{admin}/status");
    let dom = chromium(profile.path(), &["--dump-dom".to_string()], &url);
    assert!(dom.contains("cluster brokers"), "{dom}");
    assert!(dom.contains("full-sync"), "{dom}");
    assert_eq!(leader_shown(&dom), "node1");
    for n in ["node1", "node2"] {
        let r = row(&dom, n);
        assert!(r.contains(">up<"), "{n} not shown up: {r}");
        assert!(r.contains(">ready<"), "{n} admin state not shown: {r}");
        assert!(r.contains(&a.address()) || r.contains(&b.address()), "{r}");
    }
    assert!(row(&dom, "node1").contains(">leader<"));
    assert!(row(&dom, "node2").contains("follower"));

    let shot = artifacts_dir().join("status_page.png");
    let _ = std::fs::remove_file(&shot);
    chromium(
        profile.path(),
        &[format!("--screenshot={}", shot.display())],
        &url,
    );
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(png.len() > 1000 && png.starts_with(b"\x89PNG"), "not a PNG");

    // The leader goes away: the page shows node1 down and node2 leading.
    a.stop();
    wait_until(Duration::from_secs(10), "leader moves to node2", || {
        gate.metric("mqgate_node_leader", &[("node", "node2")]) == 1.0
    });
    let dom = chromium(profile.path(), &["--dump-dom".to_string()], &url);
    assert_eq!(leader_shown(&dom), "node2");
    assert!(
        row(&dom, "node1").contains(">down<"),
        "{}",
        row(&dom, "node1")
    );
    let shot = artifacts_dir().join("status_page_failover.png");
    chromium(
        profile.path(),
        &[format!("--screenshot={}", shot.display())],
        &url,
    );
    assert!(shot.exists());
}
