//! The alert rules of docs/operations.md ("Alerting hints") are valid Prometheus rules
//! (`promtool check rules`) and fit both cluster modes (`promtool test rules`): the
//! followers of a full-sync cluster, down by design, raise nothing; a full-sync cluster
//! without a leader, a cluster with no node up, and a dynsec node down each raise
//! their alert.

use crate::common::tools::PROMTOOL;
use crate::common::{assert_success, docs, tempdir};
use std::path::Path;

/// One gateway `gw:9100` with three clusters, sampled every minute for 15 minutes:
/// - `fs`, full-sync: node1 leads throughout, node2 and node3 are followers (down);
/// - `fs2`, full-sync: its leader node1 dies at minute 5 and nobody takes over;
/// - `dy`, dynsec: node2 goes down at minute 5.
const RULE_TESTS: &str = r#"
rule_files: [rules.yml]
evaluation_interval: 1m
tests:
- interval: 1m
  input_series:
  - series: 'mqgate_node_up{instance="gw:9100",job="mqgate",cluster="fs",node="node1"}'
    values: '1x15'
  - series: 'mqgate_node_up{instance="gw:9100",job="mqgate",cluster="fs",node="node2"}'
    values: '0x15'
  - series: 'mqgate_node_up{instance="gw:9100",job="mqgate",cluster="fs",node="node3"}'
    values: '0x15'
  - series: 'mqgate_node_leader{instance="gw:9100",job="mqgate",cluster="fs",node="node1"}'
    values: '1x15'
  - series: 'mqgate_node_leader{instance="gw:9100",job="mqgate",cluster="fs",node="node2"}'
    values: '0x15'
  - series: 'mqgate_node_leader{instance="gw:9100",job="mqgate",cluster="fs",node="node3"}'
    values: '0x15'
  - series: 'mqgate_leader_changes_total{instance="gw:9100",job="mqgate",cluster="fs"}'
    values: '1x15'

  - series: 'mqgate_node_up{instance="gw:9100",job="mqgate",cluster="fs2",node="node1"}'
    values: '1x4 0x10'
  - series: 'mqgate_node_up{instance="gw:9100",job="mqgate",cluster="fs2",node="node2"}'
    values: '0x15'
  - series: 'mqgate_node_leader{instance="gw:9100",job="mqgate",cluster="fs2",node="node1"}'
    values: '1x4 0x10'
  - series: 'mqgate_node_leader{instance="gw:9100",job="mqgate",cluster="fs2",node="node2"}'
    values: '0x15'
  - series: 'mqgate_leader_changes_total{instance="gw:9100",job="mqgate",cluster="fs2"}'
    values: '1x4 2x10'

  - series: 'mqgate_node_up{instance="gw:9100",job="mqgate",cluster="dy",node="node1"}'
    values: '1x15'
  - series: 'mqgate_node_up{instance="gw:9100",job="mqgate",cluster="dy",node="node2"}'
    values: '1x4 0x10'
  - series: 'mqgate_node_leader{instance="gw:9100",job="mqgate",cluster="dy",node="node1"}'
    values: '0x15'
  - series: 'mqgate_node_leader{instance="gw:9100",job="mqgate",cluster="dy",node="node2"}'
    values: '0x15'
  - series: 'mqgate_leader_changes_total{instance="gw:9100",job="mqgate",cluster="dy"}'
    values: '0x15'

  alert_rule_test:
  # Before anything broke: the full-sync followers raise nothing.
  - eval_time: 4m
    alertname: MqgateNodeDown
    exp_alerts: []
  - eval_time: 4m
    alertname: MqgateAllNodesDown
    exp_alerts: []
  - eval_time: 4m
    alertname: MqgateNoLeader
    exp_alerts: []
  # After minute 5: the dynsec node, the full-sync cluster without a leader.
  - eval_time: 12m
    alertname: MqgateNodeDown
    exp_alerts:
    - exp_labels: {instance: "gw:9100", job: mqgate, cluster: dy, node: node2}
  - eval_time: 12m
    alertname: MqgateNoLeader
    exp_alerts:
    - exp_labels: {instance: "gw:9100", cluster: fs2}
  - eval_time: 12m
    alertname: MqgateAllNodesDown
    exp_alerts:
    - exp_labels: {instance: "gw:9100", cluster: fs2}
"#;

fn promtool(dir: &Path, args: &[&str]) {
    let out = PROMTOOL
        .command()
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run promtool");
    assert_success(&out, &format!("promtool {args:?}"));
}

#[test]
fn documented_alert_rules_are_valid_and_fit_both_modes() {
    let dir = tempdir();
    // The YAML block under "## Alerting hints".
    let rules = docs::block_after("docs/operations.md", "Alerting hints", "yaml");
    std::fs::write(dir.path().join("rules.yml"), rules).expect("write rules");
    std::fs::write(dir.path().join("tests.yml"), RULE_TESTS).expect("write rule tests");
    promtool(dir.path(), &["check", "rules", "rules.yml"]);
    promtool(dir.path(), &["test", "rules", "tests.yml"]);
}
