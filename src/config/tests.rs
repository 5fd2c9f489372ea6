use super::*;

fn p(text: &str) -> Result<Config, ConfigErrors> {
    parse(Path::new("/tmp/test.toml"), text)
}

const MINIMAL: &str = r#"
[[listeners]]
name = "mqtt"
bind = "127.0.0.1:1883"
cluster = "brokers"

[clusters.brokers]
nodes = [ { name = "node1", address = "127.0.0.1:1884" } ]
"#;

#[test]
fn minimal_file_gets_spec_defaults() {
    let c = p(MINIMAL).expect("minimal config parses");
    assert_eq!(c.limits.max_connections, 50_000);
    assert_eq!(c.limits.connect_timeout, Duration::from_secs(10));
    assert_eq!(c.limits.max_connect_size, 65536);
    assert_eq!(c.admin.bind, "127.0.0.1:9100".parse().unwrap());
    let cl = &c.clusters[0];
    assert_eq!(cl.mode, Mode::Dynsec);
    assert_eq!(cl.balance, Balance::Hash);
    assert_eq!(cl.retries, 2);
    assert_eq!(cl.health.check, CheckKind::Mqtt);
    assert_eq!(cl.health.fast_interval, Duration::from_millis(250));
    assert_eq!(cl.sticky.expire, Duration::from_secs(24 * 3600));
    assert_eq!(cl.sticky.capacity, 1_000_000);
}

#[test]
fn unknown_key_is_an_error_with_line() {
    let text = format!("{MINIMAL}\n[limits]\nmax_conections = 5\n");
    let e = p(&text).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("unknown field"), "{msg}");
    assert!(msg.contains("max_conections"), "{msg}");
    assert_eq!(e.errors[0].line, Some(text.lines().count()));
}

#[test]
fn every_validation_error_is_reported_with_its_key_and_line() {
    let text = r#"
[limits]
connect_timeout = "ten seconds"

[[listeners]]
name = "mqtt"
bind = "nowhere"
cluster = "missing"

[clusters.brokers]
mode = "active"
nodes = [ { name = "node1", address = "no port" } ]
"#;
    let e = p(text).unwrap_err();
    let keys: Vec<&str> = e.errors.iter().map(|e| e.key.as_str()).collect();
    for want in [
        "limits.connect_timeout",
        "listeners[0].bind",
        "listeners[0].cluster",
        "clusters.brokers.mode",
        "clusters.brokers.nodes[0].address",
    ] {
        assert!(keys.contains(&want), "missing {want} in {keys:?}");
    }
    let line = |k: &str| e.errors.iter().find(|e| e.key == k).and_then(|e| e.line);
    assert_eq!(line("limits.connect_timeout"), Some(3));
    assert_eq!(line("listeners[0].bind"), Some(7));
    assert_eq!(line("clusters.brokers.mode"), Some(11));
    assert_eq!(line("clusters.brokers.nodes[0].address"), Some(12));
}

#[test]
fn secrets_do_not_show_in_debug() {
    let s = Secret::new(b"hunter2".to_vec());
    assert_eq!(format!("{s:?}"), "***");
}

#[test]
fn host_port_forms() {
    use super::validate::parse_host_port;
    assert_eq!(
        parse_host_port("10.0.0.1:1883").unwrap().literal(),
        Some("10.0.0.1:1883".parse().unwrap())
    );
    assert_eq!(
        parse_host_port("[::1]:1883").unwrap().literal(),
        Some("[::1]:1883".parse().unwrap())
    );
    let dns = parse_host_port("broker-3.internal:1883").unwrap();
    assert_eq!(dns.host, "broker-3.internal");
    assert!(dns.literal().is_none());
    assert!(parse_host_port("broker").is_none());
    assert!(parse_host_port("broker:0").is_none());
}

#[test]
fn several_unknown_keys_are_all_reported() {
    let text = format!("{MINIMAL}\n[limits]\nmax_conections = 5\nconect_timeout = \"1s\"\n");
    let e = p(&text).unwrap_err();
    let msg = e.to_string();
    assert_eq!(e.errors.len(), 2, "{msg}");
    assert!(
        msg.contains("max_conections") && msg.contains("conect_timeout"),
        "{msg}"
    );
}

#[test]
fn threads_defaults_to_one_per_cpu_and_refuses_negative_counts() {
    assert_eq!(p(MINIMAL).expect("minimal").limits.threads, None);
    let zero = format!("{MINIMAL}\n[limits]\nthreads = 0\n");
    assert_eq!(p(&zero).expect("threads = 0").limits.threads, Some(0));
    let bad = format!("{MINIMAL}\n[limits]\nthreads = -2\n");
    let e = p(&bad).unwrap_err();
    assert_eq!(e.errors[0].key, "limits.threads", "{e}");
    assert!(e.to_string().contains("at least 0"), "{e}");
}
