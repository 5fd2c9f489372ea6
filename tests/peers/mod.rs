//! Peer-replicated sticky tables and the sticky snapshot (SPEC section 5), with real
//! processes: three Mosquitto nodes, up to three mqgate binaries linked as peers.
//!
//! The gateways balance `round-robin` with `sessions = "all"`/persistent clients, so a
//! client that reconnects through another gateway lands on the node that holds its
//! session only if the sticky entry reached that gateway.
//!
//! `sync`: replication, convergence and the snapshot; `link`: authentication (secret,
//! TLS, names); `hostile`: bad frames and hostile peers; `corpus`: the peer-frame fuzz
//! corpus. The helpers here are shared by them and by `peers_sync`.

mod corpus;
mod hostile;
mod link;
mod sync;

use crate::common::mqtt::closed_within;
use crate::common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub(crate) const SECRET: &str = "correct horse battery staple";

pub(crate) struct GateSpec {
    pub(crate) name: &'static str,
    pub(crate) listen: u16,
    pub(crate) admin: u16,
    pub(crate) peer: u16,
}

impl GateSpec {
    pub(crate) fn new(name: &'static str) -> GateSpec {
        GateSpec {
            name,
            listen: free_port(),
            admin: free_port(),
            peer: free_port(),
        }
    }
}

/// Config of one gateway: dynsec over `nodes`, round-robin, and a `[peers]` section
/// (bind on `bind_port`, which may differ from `spec.peer` to cut it off).
#[allow(clippy::too_many_arguments)] // one flat call per gateway reads best in the tests
pub(crate) fn config(
    dir: &Path,
    spec: &GateSpec,
    bind_port: u16,
    peers: &[(&str, u16)],
    nodes: &[Mosquitto],
    sessions: &str,
    snapshot: Option<&Path>,
    secret: &str,
) -> String {
    let nodes: Vec<&Mosquitto> = nodes.iter().collect();
    let secret_file = dir.join(format!("{}.secret", spec.name));
    std::fs::write(&secret_file, secret).expect("write secret");
    let extra = format!(
        "balance = \"round-robin\"\n[clusters.brokers.sticky]\nsessions = \"{sessions}\"\n"
    );
    let mut s = basic_config(spec.listen, spec.admin, "dynsec", &nodes, &extra);
    let list: Vec<String> = peers
        .iter()
        .map(|(n, p)| format!("{{ name = \"{n}\", address = \"127.0.0.1:{p}\" }}"))
        .collect();
    s.push_str(&format!(
        "\n[peers]\nname = \"{}\"\nbind = \"127.0.0.1:{bind_port}\"\nsecret_file = \"{}\"\npeers = [ {} ]\n",
        spec.name,
        secret_file.display(),
        list.join(", ")
    ));
    if let Some(p) = snapshot {
        s.push_str(&format!("snapshot = \"{}\"\n", p.display()));
    }
    s
}

pub(crate) fn start_nodes(dir: &Path) -> Vec<Mosquitto> {
    Mosquitto::start_nodes(dir, 3)
}

/// gate-b alone over `nodes` (sticky sessions "all", plus `sticky_extra` lines),
/// with `peers` configured.
fn gate_b(
    dir: &Path,
    nodes: &[Mosquitto],
    peers: &[(&str, u16)],
    sticky_extra: &str,
) -> (GateSpec, Gate) {
    let sb = GateSpec::new("gate-b");
    let tb = config(dir, &sb, sb.peer, peers, nodes, "all", None, SECRET).replace(
        "sessions = \"all\"\n",
        &format!("sessions = \"all\"\n{sticky_extra}"),
    );
    let b = Gate::start(dir, "gate-b", &tb, sb.admin);
    (sb, b)
}

pub(crate) fn wait_nodes_up(g: &Gate) {
    wait_until(Duration::from_secs(20), "all three nodes up", || {
        g.metric("mqgate_node_up", &[]) == 3.0
    });
}

pub(crate) fn wait_peer_up(g: &Gate, peer: &str, up: bool) {
    let want = if up { 1.0 } else { 0.0 };
    wait_until(
        Duration::from_secs(20),
        &format!("peer {peer} up={up}"),
        || g.metric("mqgate_peer_up", &[("peer", peer)]) == want,
    );
}

/// The node of a sticky entry, from `GET /api/v1/clusters/brokers/sticky/{key}`.
pub(crate) fn sticky(g: &Gate, key: &str) -> Option<String> {
    sticky_node(g.admin_port, key)
}

/// A client `key` through gateway `a` (client port `a_listen`) makes a sticky entry
/// there, which then reaches gateway `b` with the same node.
fn replicated(a: &Gate, a_listen: u16, b: &Gate, key: &str, what: &str) {
    drop(raw_session(a_listen, key));
    let node = sticky(a, key).expect("entry on gate-a");
    wait_until(Duration::from_secs(10), what, || {
        sticky(b, key).as_deref() == Some(node.as_str())
    });
}

/// Read one whole frame (blocking, 10 s at most); `None` if the link closed first.
pub(crate) fn read_frame(s: &mut TcpStream) -> Option<mqgate::peers::frame::Frame> {
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut head = [0u8; 4];
    s.read_exact(&mut head).ok()?;
    let len = u32::from_be_bytes(head) as usize;
    let mut frame = head.to_vec();
    frame.resize(4 + len.min(1 << 20), 0);
    s.read_exact(&mut frame[4..]).ok()?;
    let mut interner = mqgate::peers::frame::Interner::default();
    mqgate::peers::frame::decode(&frame, &mut interner)
        .ok()
        .flatten()
        .map(|(f, _)| f)
}

pub(crate) fn encode(f: &mqgate::peers::frame::Frame) -> Vec<u8> {
    let mut v = Vec::new();
    mqgate::peers::frame::encode(f, &mut v);
    v
}

/// Until the other side closes (or 10 s pass): true if it closed.
fn closed_by_peer(s: &mut TcpStream) -> bool {
    closed_within(s, Duration::from_secs(10))
}

/// The test speaking the peer protocol by hand: dialer `name`, authenticated to the
/// acceptor it knows as `acceptor` with the shared secret (no TLS, so every frame
/// after AUTH is sealed).
pub(crate) struct RawPeer {
    s: TcpStream,
    sealer: mqgate::peers::seal::Sealer,
}

impl RawPeer {
    pub(crate) fn handshake(port: u16, name: &str, acceptor: &str, secret: &str) -> RawPeer {
        use mqgate::peers::auth::{frame_keys, prove, Keys};
        use mqgate::peers::frame::{Frame, VERSION};
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to peers port");
        let nd = [5u8; 32];
        s.write_all(&encode(&Frame::Hello {
            version: VERSION,
            name: name.into(),
            nonce: nd,
        }))
        .expect("send HELLO");
        let Some(Frame::Hello {
            name: theirs,
            nonce: na,
            ..
        }) = read_frame(&mut s)
        else {
            panic!("no HELLO")
        };
        assert_eq!(theirs, "", "the acceptor's HELLO carries no name");
        let secret = mqgate::config::Secret::new(secret.as_bytes().to_vec());
        let keys = Keys::new(&secret, None).expect("keys");
        let mac = prove(&keys, b"dialer", &nd, &na, name, acceptor);
        s.write_all(&encode(&Frame::Auth { mac }))
            .expect("send AUTH");
        assert!(
            matches!(read_frame(&mut s), Some(Frame::Auth { .. })),
            "authenticated"
        );
        let fk = frame_keys(&keys, &nd, &na, name, acceptor);
        RawPeer {
            s,
            sealer: mqgate::peers::seal::Sealer::new(&fk.send),
        }
    }

    /// Seal whole encoded frames, as the next ones on this link.
    fn seal_bytes(&mut self, frames: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        self.sealer.seal(frames, &mut out);
        out
    }

    fn seal(&mut self, f: &mqgate::peers::frame::Frame) -> Vec<u8> {
        self.seal_bytes(&encode(f))
    }

    fn send(&mut self, f: &mqgate::peers::frame::Frame) {
        let b = self.seal(f);
        self.send_raw(&b);
    }

    fn send_raw(&mut self, b: &[u8]) {
        self.s.write_all(b).expect("write to gate");
    }
}
