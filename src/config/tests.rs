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
    use super::address::parse_host_port;
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

/// Issue 32 item 4a: `[limits] connect_timeout` (the CONNECT deadline) is renamed
/// `connect_packet_timeout`, so that it is not taken for `[clusters.X] connect_timeout`.
#[test]
fn limits_connect_timeout_is_renamed_and_the_old_name_warns() {
    let new = p(&format!(
        "{MINIMAL}\n[limits]\nconnect_packet_timeout = \"4s\"\n"
    ))
    .expect("new name");
    assert_eq!(new.limits.connect_timeout, Duration::from_secs(4));
    assert!(new.warnings.is_empty(), "{:?}", new.warnings);

    let text = format!("{MINIMAL}\n[limits]\nconnect_timeout = \"3s\"\n");
    let old = p(&text).expect("the old name is still accepted");
    assert_eq!(old.limits.connect_timeout, Duration::from_secs(3));
    let lines = old.warning_lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    let want = format!(
        "/tmp/test.toml:{}: warning: key `limits.connect_timeout`",
        text.lines().count()
    );
    assert!(lines[0].starts_with(&want), "{}", lines[0]);
    assert!(
        lines[0].contains("connect_packet_timeout = \"3s\""),
        "{}",
        lines[0]
    );

    let both =
        format!("{MINIMAL}\n[limits]\nconnect_timeout = \"3s\"\nconnect_packet_timeout = \"4s\"\n");
    let e = p(&both).unwrap_err();
    assert_eq!(e.errors.len(), 1, "{e}");
    assert_eq!(e.errors[0].key, "limits.connect_timeout", "{e}");
    assert!(e.to_string().contains("both"), "{e}");

    assert!(p(MINIMAL).expect("minimal").warnings.is_empty());
}

/// Issue 32 item 4b: a type error names the full key path and shows a valid value.
#[test]
fn type_errors_name_the_full_key_path_and_a_valid_example() {
    let text = "[[listeners]]\nname = \"mqtt\"\nbind = \"127.0.0.1:1883\"\ncluster = \"brokers\"\n\n\
                [clusters.brokers]\nconnect_timeout = 5000\nnodes = [ { name = \"node1\", address = \"127.0.0.1:1884\" } ]\n";
    let e = p(text).unwrap_err();
    let msg = e.to_string();
    assert_eq!(e.errors[0].key, "clusters.brokers.connect_timeout", "{msg}");
    assert_eq!(e.errors[0].line, Some(7), "{msg}");
    assert!(
        msg.contains(
            "key `clusters.brokers.connect_timeout`: expected a duration string such as \"5s\", found integer 5000"
        ),
        "{msg}"
    );
    assert!(msg.contains("connect_timeout = \"5000ms\""), "{msg}");

    let e = p(&format!("{MINIMAL}\n[limits]\nmax_connections = \"2\"\n")).unwrap_err();
    let msg = e.to_string();
    assert_eq!(e.errors[0].key, "limits.max_connections", "{msg}");
    assert!(msg.contains("expected an integer"), "{msg}");
    assert!(msg.contains("max_connections = 2"), "{msg}");
    assert!(!msg.contains("i64"), "{msg}");

    let e = p(&MINIMAL.replace(
        "[clusters.brokers]",
        "[clusters.brokers.health]\nrise = 2.5\n[clusters.brokers]",
    ))
    .unwrap_err();
    assert_eq!(e.errors[0].key, "clusters.brokers.health.rise", "{e}");
    assert!(
        e.to_string()
            .contains("expected an integer, found number 2.5"),
        "{e}"
    );

    let e = p(&MINIMAL.replace(
        "name = \"mqtt\"",
        "name = \"mqtt\"\nproxy_protocol = \"yes\"",
    ))
    .unwrap_err();
    assert_eq!(e.errors[0].key, "listeners[0].proxy_protocol", "{e}");
    assert!(e.to_string().contains("expected true or false"), "{e}");
}

/// Issue 32 item 4b: a typo inside an inline node table (written over several lines)
/// is reported with the node's key path, not as key `{ name`.
#[test]
fn a_typo_in_an_inline_node_table_names_the_node() {
    let text = "[[listeners]]\nname = \"mqtt\"\nbind = \"127.0.0.1:1883\"\ncluster = \"brokers\"\n\n\
                [clusters.brokers]\nnodes = [\n  { name = \"node1\", address = \"127.0.0.1:1884\" },\n  \
                { name = \"node2\", adress = \"127.0.0.1:1885\" },\n]\n";
    let e = p(text).unwrap_err();
    let msg = e.to_string();
    assert_eq!(e.errors.len(), 1, "{msg}");
    assert_eq!(e.errors[0].key, "clusters.brokers.nodes[1].adress", "{msg}");
    assert_eq!(e.errors[0].line, Some(9), "{msg}");
    assert!(msg.contains("did you mean `address`?"), "{msg}");
    assert!(!msg.contains("{ name"), "{msg}");

    let missing = MINIMAL.replace(", address = \"127.0.0.1:1884\"", "");
    let e = p(&missing).unwrap_err();
    assert_eq!(e.errors[0].key, "clusters.brokers.nodes[0].address", "{e}");
    assert!(e.to_string().contains("required key is missing"), "{e}");

    let e = p(&MINIMAL.replace("bind = \"127.0.0.1:1883\"\n", "")).unwrap_err();
    assert_eq!(e.errors[0].key, "listeners[0].bind", "{e}");
    assert!(e.to_string().contains("bind = \"0.0.0.0:1883\""), "{e}");
}

#[test]
fn admin_allowed_hosts_are_names_or_addresses() {
    let text = format!(
        "{MINIMAL}\n[admin]\nallowed_hosts = [\"GW1.Example.com.\", \"10.0.0.5\", \"[::1]\"]\n"
    );
    let c = p(&text).expect("valid allowed_hosts");
    assert_eq!(
        c.admin.allowed_hosts,
        ["gw1.example.com", "10.0.0.5", "::1"]
    );
    assert!(p(MINIMAL).expect("minimal").admin.allowed_hosts.is_empty());
    for bad in [
        "gw1.example.com:9100",
        "http://gw1",
        "*.example.com",
        "",
        "a..b",
    ] {
        let text = format!("{MINIMAL}\n[admin]\nallowed_hosts = [\"ok.example\", {bad:?}]\n");
        let msg = p(&text).expect_err(bad).to_string();
        assert!(msg.contains("admin.allowed_hosts[1]"), "{bad}: {msg}");
        assert!(msg.contains("without scheme or port"), "{bad}: {msg}");
    }
}
