//! Issue 23 item 8: every number in the config file is bounded, by one validation that
//! `mqgate check`, `mqgate run` and every reload share, and a file `check` accepts
//! starts and reloads.
//!
//! The bounds are read from docs/configuration.md (each numeric row gives its range in
//! its type column: `integer 1–100000000`, `duration 1ms–1y`), so the reference, the
//! parser and these tests cannot drift apart:
//! - `documented_ranges_are_what_the_parser_enforces`: both ends of every range are
//!   accepted, one step beyond either end is refused with the key named;
//! - `any_config_check_accepts_starts_and_reloads` (proptest): files with values for
//!   every numeric and duration key (both ends, inside, beyond, absurd) are accepted
//!   exactly when every value is in its documented range, and an accepted one starts a
//!   gateway in-process with everything `mqgate run` builds (listeners plain, TLS and
//!   PROXY, a real broker node and a DNS-named one, admin API, file watcher), serves
//!   clients, and reloads into another accepted file;
//! - the reported sequence: `check` refuses `max_connections = 4000000000000000000`,
//!   a running gateway given that file by reload keeps running and counts an error,
//!   and a later good edit is applied with clients still accepted.

use crate::common::*;
use proptest::prelude::*;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// The documented range of a numeric key.
#[derive(Clone, Debug)]
enum Range {
    Int(i64, i64),
    Dur(Duration, Duration),
}

/// A numeric key: its table as written in the reference (`clusters.NAME.health`), its
/// name and range.
#[derive(Clone, Debug)]
struct NumKey {
    table: String,
    key: String,
    range: Range,
}

impl NumKey {
    fn path(&self) -> String {
        // A `[[listeners]]` key is the test file's first (only) listener's.
        let table = match self.table.as_str() {
            "listeners" => "listeners[0]".to_string(),
            // Likewise the first (only) fan-out rule.
            "clusters.NAME.fanout" => "clusters.brokers.fanout[0]".to_string(),
            t => t.replace("NAME", "brokers"),
        };
        format!("{table}.{}", self.key)
    }
}

/// Every `integer` and `duration` row of docs/configuration.md, with its range.
fn numeric_keys() -> Vec<NumKey> {
    let mut out = Vec::new();
    for (t, rows) in docs::config_reference() {
        for cells in rows {
            let (key, kind) = (cells[0].trim_matches('`'), cells[1].as_str());
            let Some((word, range)) = kind.split_once(' ') else {
                assert!(
                    kind != "integer" && kind != "duration",
                    "[{t}] `{key}`: a numeric row must give its range, e.g. `integer 1–100`"
                );
                continue;
            };
            if word != "integer" && word != "duration" {
                continue;
            }
            let (lo, hi) = range.split_once('–').unwrap_or_else(|| {
                panic!("[{t}] `{key}`: type {kind:?} does not give a range like `{word} A–B`")
            });
            let range = if word == "integer" {
                let n = |s: &str| {
                    s.parse::<i64>()
                        .unwrap_or_else(|e| panic!("[{t}] `{key}`: bound {s:?}: {e}"))
                };
                Range::Int(n(lo), n(hi))
            } else {
                let d = |s: &str| {
                    humantime::parse_duration(s)
                        .unwrap_or_else(|e| panic!("[{t}] `{key}`: bound {s:?}: {e}"))
                };
                Range::Dur(d(lo), d(hi))
            };
            out.push(NumKey {
                table: t.clone(),
                key: key.to_string(),
                range,
            });
        }
    }
    assert!(out.len() >= 20, "too few numeric keys found: {out:?}");
    out
}

/// Does a duration of `d` fit `min..=max`? The smallest non-zero duration is 1 ms
/// whatever the row says (docs/configuration.md, "Numbers and durations are bounded").
fn dur_ok(d: Duration, min: Duration, max: Duration) -> bool {
    d >= min && d <= max && (d.is_zero() || d >= Duration::from_millis(1))
}

/// A TOML value for a duration (whole milliseconds or nanoseconds, as humantime reads).
fn dur_text(d: Duration) -> String {
    if d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("\"{}ms\"", d.as_millis())
    } else {
        format!("\"{}ns\"", d.as_nanos())
    }
}

/// `body` and then the limits and cluster tables, with `extra` (table path, `key =
/// value` lines) added to them.
fn config_with(body: &str, extra: &[(String, String)]) -> String {
    let mut tables: Vec<(&str, String)> = vec![
        ("limits", String::new()),
        ("clusters.brokers", String::new()),
        ("clusters.brokers.health", String::new()),
        ("clusters.brokers.sticky", String::new()),
        ("clusters.brokers.sessions", String::new()),
        ("peers", String::new()),
        ("clusters.brokers.shaping", String::new()),
        ("clusters.brokers.fanout", String::new()),
    ];
    let mut out = body.to_string();
    for (t, line) in extra {
        match tables.iter_mut().find(|(name, _)| name == t) {
            Some((_, lines)) => lines.push_str(line),
            // `[[listeners]]` keys go to the body's last listener, the last table in it.
            None if t == "listeners" => out.push_str(line),
            None => panic!("no table {t} in the test's base file"),
        }
    }
    for (t, lines) in tables {
        if t == "clusters.brokers.fanout" {
            // An array of tables, written only when a key of it is set, with its
            // required glob.
            if !lines.is_empty() {
                out.push_str(&format!("\n[[{t}]]\nclients = \"backend-*\"\n{lines}"));
            }
            continue;
        }
        if t == "peers" {
            if lines.is_empty() {
                continue;
            }
            // The required keys; the secret is any variable that is set (its value
            // does not matter here).
            out.push_str(&format!(
                "\n[{t}]\nname = \"bounds\"\nbind = \"127.0.0.1:0\"\nsecret_env = \"PATH\"\n{lines}"
            ));
            continue;
        }
        out.push_str(&format!("\n[{t}]\n{lines}"));
    }
    out
}

const MINIMAL_BODY: &str =
    "[[listeners]]\nname = \"mqtt\"\nbind = \"127.0.0.1:0\"\ncluster = \"brokers\"\n";
const NODES: &str = "nodes = [ { name = \"n1\", address = \"127.0.0.1:1\" } ]\n";

fn parse(text: &str) -> Result<mqgate::config::Config, mqgate::config::ConfigErrors> {
    mqgate::config::parse(Path::new("/tmp/bounds.toml"), text)
}

/// One key set to `value` in an otherwise minimal file.
fn one(k: &NumKey, value: &str) -> String {
    let table = k.table.replace("NAME", "brokers");
    let mut extra = vec![(table.clone(), format!("{} = {value}\n", k.key))];
    if table != "clusters.brokers" {
        extra.push(("clusters.brokers".into(), NODES.into()));
    } else {
        extra[0].1.push_str(NODES);
    }
    config_with(MINIMAL_BODY, &extra)
}

#[test]
fn documented_ranges_are_what_the_parser_enforces() {
    let mut problems = Vec::new();
    for k in numeric_keys() {
        let (good, bad): (Vec<String>, Vec<String>) = match k.range {
            Range::Int(lo, hi) => (
                vec![lo.to_string(), hi.to_string()],
                vec![(lo - 1).to_string(), (hi + 1).to_string()],
            ),
            Range::Dur(lo, hi) => {
                let mut bad = vec![dur_text(hi + Duration::from_millis(1))];
                if lo.is_zero() {
                    bad.push(dur_text(Duration::from_micros(999)));
                } else {
                    bad.push("\"0s\"".into());
                    bad.push(dur_text(lo - Duration::from_nanos(1)));
                }
                (vec![dur_text(lo), dur_text(hi)], bad)
            }
        };
        for v in good {
            if let Err(e) = parse(&one(&k, &v)) {
                problems.push(format!(
                    "{} = {v} is documented but refused:\n{e}",
                    k.path()
                ));
            }
        }
        for v in bad {
            match parse(&one(&k, &v)) {
                Ok(_) => problems.push(format!("{} = {v} is out of range but accepted", k.path())),
                Err(e) => {
                    let msg = e.to_string();
                    let named = e.errors.iter().any(|x| x.key == k.path());
                    if !named
                        || !(msg.contains("at most")
                            || msg.contains("1ms")
                            || msg.contains("1y")
                            || msg.contains("greater than zero"))
                    {
                        problems.push(format!(
                            "{} = {v}: the error does not name the key and its bound:\n{msg}",
                            k.path()
                        ));
                    }
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The reported value: `check` says what is wrong, with the range, instead of OK.
#[test]
fn check_refuses_an_absurd_max_connections() {
    let tmp = tempdir();
    let file = tmp.path().join("mqgate.toml");
    let text = format!(
        "[limits]\nmax_connections = 4000000000000000000\n\n{MINIMAL_BODY}\n[clusters.brokers]\n{NODES}"
    );
    std::fs::write(&file, text).expect("write");
    let (code, _, stderr) = mqgate_check(&file);
    assert_eq!(code, Some(1), "check must refuse it:\n{stderr}");
    assert!(
        stderr.contains(":2: key `limits.max_connections`: must be at least 1 and at most 100000000, got 4000000000000000000"),
        "{stderr}"
    );
}

/// The reported sequence against a running gateway: the absurd file given by reload
/// (the file watcher) is refused and counted, the gateway keeps serving, and a later
/// good edit is applied, with clients accepted on the old and the new listener.
#[test]
fn a_reload_with_an_absurd_max_connections_is_refused_and_later_edits_apply() {
    let dir = tempdir();
    let d = dir.path();
    let n1 = Mosquitto::start("n1", d);
    let (listen, admin, more) = (free_port(), free_port(), free_port());
    let good = basic_config(listen, admin, "dynsec", &[&n1], "");
    let gate = Gate::start(d, "gw", &good, admin);
    gate.wait_node_up("n1");
    drop(raw_session(listen, "before"));

    let reloads = |result: &str| gate.metric("mqgate_config_reloads_total", &[("result", result)]);
    gate.save_config(&format!(
        "[limits]\nmax_connections = 4000000000000000000\n{good}"
    ));
    wait_until(
        Duration::from_secs(10),
        "the absurd file counted as a failed reload",
        || reloads("error") == 1.0,
    );
    assert!(
        gate.log_text()
            .contains("key `limits.max_connections`: must be at least 1 and at most 100000000"),
        "{}",
        gate.log_text()
    );
    drop(raw_session(listen, "after-refusal"));

    // A good edit: a smaller limit and one more listener.
    gate.save_config(&format!(
        "[limits]\nmax_connections = 1000\n{good}\n[[listeners]]\nname = \"more\"\nbind = \"127.0.0.1:{more}\"\ncluster = \"brokers\"\n"
    ));
    wait_until(Duration::from_secs(10), "the good edit applied", || {
        reloads("ok") == 1.0
    });
    assert_eq!(reloads("error"), 1.0);
    let mut sessions = Vec::new();
    for i in 0..5 {
        sessions.push(raw_session(listen, &format!("c{i}")));
        sessions.push(raw_session(more, &format!("m{i}")));
    }
    assert!(sessions.iter_mut().all(ping), "every session answers");
}

/// A `Config` built in code (not through validation) with a connection limit beyond
/// what a semaphore or a `u32` holds: `apply` neither panics nor miscounts permits, up
/// and down again.
#[test]
fn apply_keeps_the_connection_limit_exact_whatever_the_config_says() {
    let tmp = tempdir();
    let file = tmp.path().join("mqgate.toml");
    std::fs::write(
        &file,
        format!("[limits]\nmax_connections = 50\nshutdown_grace = \"0s\"\n\n{MINIMAL_BODY}\n[clusters.brokers]\n{NODES}"),
    )
    .expect("write");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let cfg = mqgate::config::load(&file).unwrap_or_else(|e| panic!("{e}"));
        let gw = mqgate::Gateway::start(cfg.clone()).await.expect("start");
        let permits = || gw.shared.data.conn_limit.available_permits();
        assert_eq!(permits(), 50);
        for max in [(1usize << 33) + 7, usize::MAX, 50, (1 << 33) + 7, 20, 50] {
            let mut c = cfg.clone();
            c.limits.max_connections = max;
            gw.apply(c).await.expect("apply");
            let want = max.min(tokio::sync::Semaphore::MAX_PERMITS);
            wait_until_async(
                Duration::from_secs(10),
                &format!("{want} permits"),
                || async { permits() == want },
            )
            .await;
        }
        gw.shutdown().await;
    });
}

// ---- the property test ----

/// Panics on the threads of the gateway under test: its runtime's, named
/// [`GATEWAY_THREADS`], and the library's own (`mqgate-conn-N`). tokio would otherwise
/// swallow a panicking connection or reload task. (The other tests of this binary run
/// meanwhile: their panics are not counted here.)
static PANICS: AtomicUsize = AtomicUsize::new(0);

/// The name of the in-process gateway's runtime threads.
const GATEWAY_THREADS: &str = "bounds-gateway";

fn count_panics() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            let name = thread.name().unwrap_or("");
            if name.starts_with(GATEWAY_THREADS) || name.starts_with("mqgate-") {
                PANICS.fetch_add(1, Ordering::SeqCst);
            }
            default(info)
        }));
    });
}

/// A generated value: its TOML text and whether it is in the documented range; `None`
/// leaves the key out (its default).
type Gen = Option<(String, bool)>;

/// Out-of-range values are rare per key (about 1 in 65) because a file is in range only
/// if every one of its ~50 keys is: more keys need rarer faults to keep a quarter of the
/// files starting.
fn value(range: &Range) -> BoxedStrategy<Gen> {
    let present: BoxedStrategy<Gen> = match *range {
        Range::Int(lo, hi) => {
            let beyond = prop_oneof![
                Just(lo.saturating_sub(1)),
                Just(hi.saturating_add(1)),
                Just(4_000_000_000_000_000_000i64),
                Just(i64::MAX),
                Just(i64::MIN),
                any::<i64>(),
            ];
            prop_oneof![20 => Just(lo), 20 => Just(hi), 24 => lo..=hi, 1 => beyond]
                .prop_map(move |v| Some((v.to_string(), (lo..=hi).contains(&v))))
                .boxed()
        }
        Range::Dur(lo, hi) => {
            let hi_ms = u64::try_from(hi.as_millis()).unwrap_or(u64::MAX);
            let dur = prop_oneof![
                20 => Just(lo),
                20 => Just(hi),
                24 => (1u64..=hi_ms).prop_map(Duration::from_millis),
                1 => prop_oneof![
                    Just(Duration::ZERO),
                    Just(Duration::from_micros(999)),
                    Just(hi + Duration::from_millis(1)),
                    Just(Duration::from_secs(100 * 365 * 86_400)),
                ],
            ]
            .prop_map(move |d| Some((dur_text(d), dur_ok(d, lo, hi))));
            // Parses (3.2e18 s, beyond what `Instant + Duration` takes), and one too
            // large for humantime itself.
            let absurd = prop_oneof![
                Just(Some(("\"100000000000y\"".to_string(), false))),
                Just(Some(("\"584942417356y\"".to_string(), false))),
            ];
            prop_oneof![66 => dur, 1 => absurd].boxed()
        }
    };
    prop_oneof![34 => present, 6 => Just(None)].boxed()
}

/// The keys the property test sets: every numeric key but the old name
/// `limits.connect_timeout` (it may not be given with its new name).
fn prop_keys() -> Vec<NumKey> {
    numeric_keys()
        .into_iter()
        .filter(|k| !(k.table == "limits" && k.key == "connect_timeout"))
        .collect()
}

#[derive(Clone)]
struct Setup {
    broker: String,
    plain: u16,
    tls: u16,
    proxy: u16,
    admin: u16,
    cert: String,
    key: String,
}

/// A file with the generated values, and whether all of them are in range.
fn generated(s: &Setup, keys: &[NumKey], vals: &[Gen]) -> (String, bool) {
    let body = format!(
        "[admin]\nbind = \"127.0.0.1:{admin}\"\n\n\
         [[listeners]]\nname = \"mqtt\"\nbind = \"127.0.0.1:{plain}\"\ncluster = \"brokers\"\n\n\
         [[listeners]]\nname = \"mqtts\"\nbind = \"127.0.0.1:{tls}\"\ncluster = \"brokers\"\n\
         [listeners.tls]\ncert = \"{cert}\"\nkey = \"{key}\"\n\n\
         [[listeners]]\nname = \"proxied\"\nbind = \"127.0.0.1:{proxy}\"\ncluster = \"brokers\"\n\
         proxy_protocol = true\ntrusted_proxies = [\"127.0.0.1\"]\n",
        admin = s.admin,
        plain = s.plain,
        tls = s.tls,
        proxy = s.proxy,
        cert = s.cert,
        key = s.key,
    );
    // A real broker, and a node by DNS name (its address re-resolved every dns_refresh).
    let mut extra = vec![(
        "clusters.brokers".to_string(),
        format!(
            "nodes = [ {{ name = \"n1\", address = \"{}\" }}, {{ name = \"dns\", address = \"localhost:1\" }} ]\n",
            s.broker
        ),
    )];
    let mut in_range = true;
    for (k, v) in keys.iter().zip(vals) {
        if let Some((text, ok)) = v {
            extra.push((
                k.table.replace("NAME", "brokers"),
                format!("{} = {text}\n", k.key),
            ));
            in_range &= ok;
        }
    }
    (config_with(&body, &extra), in_range)
}

/// Clients of each listener: a CONNECT on the plain one (read for a moment: a CONNACK,
/// a close, or nothing while it is held), the start of a ClientHello on the TLS one,
/// a few bytes of a header on the PROXY one. Each then goes away.
fn poke(s: &Setup) {
    if let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", s.plain)) {
        // A CONNECT (3.1.1) that keeps its session, so that it gets a sticky entry.
        let _ = c.write_all(&Connect::new("prop").persistent().keep_alive(30).bytes());
        let _ = read_to_close(&mut c, Duration::from_millis(200));
    }
    for port in [s.tls, s.proxy] {
        if let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = c.write_all(b"\x16\x03\x01");
        }
    }
}

/// Start a gateway on `first` with everything `mqgate run` starts, serve clients,
/// reload into `second` (which must be applied, the connection limit resized), serve
/// clients again and shut down.
async fn start_serve_reload(s: &Setup, file: &Path, second: &str) -> Result<(), String> {
    let cfg = mqgate::config::load(file).map_err(|e| format!("{e}"))?;
    let want = mqgate::config::parse(file, second).map_err(|e| format!("second file: {e}"))?;
    let gw = mqgate::Gateway::start(cfg)
        .await
        .map_err(|e| format!("an accepted file did not start: {e:#}"))?;
    mqgate::run::wire(&gw, true)
        .await
        .map_err(|e| format!("admin API, watch, summary: {e:#}"))?;
    let clients = |s: &Setup| {
        let s = s.clone();
        tokio::task::spawn_blocking(move || poke(&s))
    };
    clients(s).await.map_err(|e| format!("clients: {e}"))?;
    std::fs::write(file, second).map_err(|e| format!("write: {e}"))?;
    gw.reload()
        .await
        .map_err(|e| format!("an accepted file did not reload: {e}"))?;
    let now = gw.shared.runtime().config.clone();
    if now.limits != want.limits || now.clusters != want.clusters {
        return Err(format!(
            "the reload was not applied: running {:?}, want {:?}",
            now.limits, want.limits
        ));
    }
    // The connection limit follows, once the clients above have gone.
    let permits = want.limits.max_connections;
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while gw.shared.data.conn_limit.available_permits() != permits {
        if std::time::Instant::now() > end {
            return Err(format!(
                "{} connection permits after the reload, want {permits}",
                gw.shared.data.conn_limit.available_permits()
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    clients(s).await.map_err(|e| format!("clients: {e}"))?;
    let errors = gw
        .shared
        .metrics
        .config_reloads
        .with_label_values(&["error"])
        .get();
    if errors != 0 {
        return Err(format!("{errors} failed reload(s) of accepted files"));
    }
    tokio::time::timeout(Duration::from_secs(20), gw.shutdown())
        .await
        .map_err(|_| "shutdown took over 20 s".to_string())
}

/// Run `mqgate check -c FILE`: did it accept the file?
fn check_accepts(file: &Path) -> (bool, String) {
    let (code, _, stderr) = mqgate_check(file);
    (code == Some(0), stderr)
}

#[test]
fn any_config_check_accepts_starts_and_reloads() {
    count_panics();
    let dir = tempdir();
    let d = dir.path();
    let broker = Mosquitto::start("prop", d);
    let (_, cert, key) = Pki::new("bounds CA").write_server(d, "srv");
    let s = Setup {
        broker: broker.address(),
        plain: free_port(),
        tls: free_port(),
        proxy: free_port(),
        admin: free_port(),
        cert: cert.display().to_string(),
        key: key.display().to_string(),
    };
    let keys = prop_keys();
    let file = d.join("mqgate.toml");
    let cases = std::env::var("MQGATE_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let started = AtomicUsize::new(0);
    let strategy = (
        keys.iter().map(|k| value(&k.range)).collect::<Vec<_>>(),
        keys.iter().map(|k| value(&k.range)).collect::<Vec<_>>(),
    );
    let result = runner.run(&strategy, |(a, b)| {
        let (first, first_ok) = generated(&s, &keys, &a);
        std::fs::write(&file, &first).map_err(|e| TestCaseError::fail(format!("write: {e}")))?;
        let loaded = mqgate::config::load(&file);
        prop_assert_eq!(
            loaded.is_ok(),
            first_ok,
            "in documented range: {}, but config::load says {:?}\n{}",
            first_ok,
            loaded.as_ref().err().map(|e| e.to_string()),
            first
        );
        let (checked, stderr) = check_accepts(&file);
        prop_assert_eq!(checked, first_ok, "mqgate check:\n{}\n{}", stderr, first);
        if !first_ok {
            return Ok(());
        }
        let (second, second_ok) = generated(&s, &keys, &b);
        let second = if second_ok { second } else { first.clone() };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(GATEWAY_THREADS)
            .enable_all()
            .build()
            .map_err(|e| TestCaseError::fail(format!("runtime: {e}")))?;
        let before = PANICS.load(Ordering::SeqCst);
        let outcome = rt.block_on(start_serve_reload(&s, &file, &second));
        drop(rt);
        prop_assert!(
            outcome.is_ok(),
            "{}\nfirst file:\n{}\nsecond file:\n{}",
            outcome.err().unwrap_or_default(),
            first,
            second
        );
        prop_assert_eq!(
            PANICS.load(Ordering::SeqCst),
            before,
            "a task panicked (see stderr)\n{}\n{}",
            first,
            second
        );
        started.fetch_add(1, Ordering::SeqCst);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let started = started.load(Ordering::SeqCst);
    eprintln!("{started} of {cases} generated files were in range: each started and reloaded");
    assert!(
        started * 4 >= cases as usize,
        "only {started} of {cases} generated files were in range: the generator needs tuning"
    );
}
