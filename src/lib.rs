//! mqgate: an MQTT-aware layer-4 proxy and load balancer for Eclipse Mosquitto fleets.
//!
//! Data flow (see `LIFECYCLE.md` for one connection's life in detail):
//!
//! ```text
//!            config file ──watch/SIGHUP/API (reload)──▶ config (parse → validate)
//!                                       ─▶ plan::diff ─▶ gateway: prepare → commit
//!                                                  │ runtime::DataPath (ArcSwap<Runtime>)
//!                                                  ▼
//! transport: listener accept ─▶ [PROXY header in] ─▶ [TLS] ─▶ [WebSocket (ws)]
//!                                                  → stream + proxy::ClientCtx
//!                                                  ▼
//! session:   read CONNECT (mqtt, deadline, size cap) → cluster::pick, held while no node
//!              full-sync: the leader   ◀── health (one task per node)
//!              dynsec: sticky → balance  ◀── sticky table ◀──▶ peers
//!                                                  ▼
//! upstream:  connect to the node (timeout, retries), [PROXY header out], [TLS to the
//!            broker: broker_tls], first write
//!                                                  ▼
//! relay:     relay::task: both ways, CONNACK observed and deadlined; closed through
//!            sessions::SessionScope (node down, maint, listener removed, shutdown)
//!
//! beside:    admin (hyper: /metrics /status /api; a reload::Reload handle), peers,
//!            refused (summary), each with a host::Host handle; state: the gateway's
//!            own wiring (Shared); run: the composition root
//! ```
//!
//! The data path (transport → session → upstream → relay) knows nothing about HTTP,
//! peers or files: it asks [`cluster`] for a node and counts into [`metrics`].
// One exception, with its SAFETY argument: `listener::watch`.
#![deny(unsafe_code)]
// No `unwrap()` on I/O or input: errors are handled or reported (unit tests may).
#![warn(clippy::unwrap_used)]

pub mod access;
pub mod admin;
pub mod broker_tls;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod fanout;
pub mod fdlimit;
pub mod gateway;
pub mod handover;
pub mod health;
pub mod hold;
pub mod host;
pub mod identity;
pub mod listener;
pub mod live;
pub mod logging;
pub mod metrics;
pub mod mqtt;
pub mod orphans;
pub mod peers;
pub mod pipes;
pub mod plan;
pub mod proxy;
pub mod rate;
pub mod refused;
pub mod relay;
pub mod reload;
pub mod reply;
pub mod run;
pub mod runtime;
pub mod session;
pub mod sessions;
pub mod shaping;
pub mod state;
pub mod sticky;
pub mod sync;
pub mod tls;
pub mod transport;
pub mod upstream;
pub mod workers;
pub mod ws;

pub use gateway::Gateway;
pub use run::{run, run_opts, RunOptions};
