//! Two mqgate gateways linked as peers (`[peers]`, a shared secret), each over its own
//! list of nodes, with the same extra sections; started and waited for until both
//! links are up.

use super::fleet::{gate_config, Gate};
use super::{free_port, wait_until};
use std::path::Path;
use std::time::Duration;

/// The peer names, in order.
pub const NAMES: [&str; 2] = ["gate-a", "gate-b"];

/// Write the shared peer secret (mode 0600) into `dir`.
pub fn secret(dir: &Path) -> std::path::PathBuf {
    let secret = dir.join("peers.secret");
    std::fs::write(&secret, "pair-secret\n").expect("secret");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    secret
}

/// gate-a over `nodes[0]` and gate-b over `nodes[1]` (dynsec; `sections` added to
/// both; with `snapshot`, each keeps its sticky snapshot in `dir/NAME.snapshot`),
/// linked as peers; returns each gateway with its client port once both peer links
/// are up.
pub fn start(
    dir: &Path,
    nodes: [Vec<(&str, String)>; 2],
    sections: &str,
    snapshot: bool,
) -> Vec<(Gate, u16)> {
    let secret = secret(dir);
    let peer_ports = [free_port(), free_port()];
    let gates: Vec<(Gate, u16)> = (0..2)
        .map(|i| {
            let snapshot = if snapshot {
                let path = dir.join(format!("{}.snapshot", NAMES[i]));
                format!("snapshot = \"{}\"\n", path.display())
            } else {
                String::new()
            };
            let peers = format!(
                "\n[peers]\nname = \"{}\"\nbind = \"127.0.0.1:{}\"\nsecret_file = \"{}\"\n{snapshot}peers = [ {{ name = \"{}\", address = \"127.0.0.1:{}\" }} ]\n",
                NAMES[i],
                peer_ports[i],
                secret.display(),
                NAMES[1 - i],
                peer_ports[1 - i]
            );
            Gate::start_with(dir, NAMES[i], |listen, admin| {
                gate_config(
                    listen,
                    admin,
                    "dynsec",
                    &nodes[i],
                    "",
                    "",
                    &format!("{sections}{peers}"),
                )
            })
        })
        .collect();
    for (i, (g, _)) in gates.iter().enumerate() {
        for (n, _) in &nodes[i] {
            g.wait_node_up(n);
        }
        wait_until(Duration::from_secs(30), "peer link up", || {
            g.metric("mqgate_peer_up", &[("peer", NAMES[1 - i])]) == 1.0
        });
    }
    gates
}
