//! deploy/kubernetes/: what can be checked without a cluster. The config in the
//! ConfigMap passes `mqgate check` with the environment the StatefulSet gives it; the
//! pod's grace period covers the preStop sleep and `shutdown_grace`; and a config file
//! mounted the way kubelet mounts a ConfigMap (`mqgate.toml -> ..data/mqgate.toml`,
//! `..data -> ..TIMESTAMP`) is reloaded when kubelet swaps `..data` to a new directory
//! and deletes the old one, twice in a row. The manifests themselves are validated
//! against the Kubernetes schemas by integration/test.d/kubernetes.sh.

use crate::common::fleet::mqgate_command;
use crate::common::*;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::Duration;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/kubernetes");

/// The `mqgate.toml: |` block of configmap.yaml, unindented.
fn configmap_toml() -> String {
    let text = std::fs::read_to_string(format!("{DIR}/configmap.yaml")).expect("configmap.yaml");
    let mut lines = text.lines().skip_while(|l| l.trim() != "mqgate.toml: |");
    lines.next().expect("a `mqgate.toml: |` key");
    let mut out = String::new();
    for l in lines {
        if !l.is_empty() && !l.starts_with("    ") {
            break;
        }
        out.push_str(l.strip_prefix("    ").unwrap_or(l));
        out.push('\n');
    }
    out
}

/// The number after `key:` in `text` (first occurrence).
fn number_after(text: &str, key: &str) -> u64 {
    let at = text.find(key).unwrap_or_else(|| panic!("{key} not found"));
    text[at + key.len()..]
        .trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{key} has no number"))
}

#[test]
fn the_configmap_config_passes_check_and_the_grace_period_covers_the_drain() {
    let dir = tempdir();
    let file = dir.path().join("mqgate.toml");
    let toml = configmap_toml();
    std::fs::write(&file, &toml).expect("write");
    let out = mqgate_command(&["check", "-c", file.to_str().expect("utf-8")])
        .env("POD_NAME", "mqgate-0")
        .env("MQGATE_ADMIN_TOKEN", "t".repeat(64))
        .env("MQGATE_PEERS_SECRET", "s".repeat(64))
        .output()
        .expect("mqgate check");
    assert!(
        out.status.success(),
        "mqgate check refused the ConfigMap's config:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Without POD_NAME (name_env), check says so.
    let out = mqgate_command(&["check", "-c", file.to_str().expect("utf-8")])
        .env_remove("POD_NAME")
        .env("MQGATE_PEERS_SECRET", "s".repeat(64))
        .env("MQGATE_ADMIN_TOKEN", "t".repeat(64))
        .output()
        .expect("mqgate check");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("POD_NAME"), "{err}");

    let sts = std::fs::read_to_string(format!("{DIR}/statefulset.yaml")).expect("statefulset");
    let grace = number_after(&sts, "terminationGracePeriodSeconds:");
    let pre_stop = number_after(&sts, "seconds:");
    let shutdown = number_after(&toml, "shutdown_grace = \"");
    assert!(
        grace >= pre_stop + shutdown + 5,
        "terminationGracePeriodSeconds {grace} < preStop {pre_stop} + shutdown_grace {shutdown} + 5"
    );
}

/// Write `text` as kubelet's atomic writer does: a new timestamped directory, a
/// `..data_tmp` symlink to it renamed over `..data`, the old directory removed.
fn kubelet_update(cm: &Path, generation: u32, text: &str) {
    let new = format!("..2026_12_06_00_00_{generation:02}.000000001");
    std::fs::create_dir(cm.join(&new)).expect("new data dir");
    std::fs::write(cm.join(&new).join("mqgate.toml"), text).expect("write");
    let old = std::fs::read_link(cm.join("..data")).ok();
    let tmp = cm.join("..data_tmp");
    symlink(&new, &tmp).expect("..data_tmp");
    std::fs::rename(&tmp, cm.join("..data")).expect("swap ..data");
    if !cm.join("mqgate.toml").exists() {
        symlink("..data/mqgate.toml", cm.join("mqgate.toml")).expect("mqgate.toml link");
    }
    if let Some(old) = old {
        std::fs::remove_dir_all(cm.join(old)).expect("remove old data dir");
    }
}

#[test]
fn a_configmap_update_through_the_data_symlink_swap_is_reloaded() {
    let dir = tempdir();
    let d = dir.path();
    let n1 = Mosquitto::start("n1", d);
    let (listen, admin) = (free_port(), free_port());
    let base = basic_config(listen, admin, "dynsec", &[&n1], "");
    let cm = d.join("configmap");
    std::fs::create_dir(&cm).expect("configmap dir");
    kubelet_update(&cm, 1, &base);
    let gate = Gate::start_at(d, "gate", &cm.join("mqgate.toml"), admin);
    let ok = |g: &Gate| g.metric("mqgate_config_reloads_total", &[("result", "ok")]);
    for generation in 2..=3 {
        let extra = free_port();
        let text = format!(
            "{base}\n[[listeners]]\nname = \"more{generation}\"\nbind = \"127.0.0.1:{extra}\"\ncluster = \"brokers\"\n"
        );
        kubelet_update(&cm, generation, &text);
        wait_until(
            Duration::from_secs(15),
            &format!("ConfigMap update {generation} applied"),
            || port_open(extra),
        );
        assert_eq!(ok(&gate), f64::from(generation - 1), "{}", gate.log_text());
    }
}
