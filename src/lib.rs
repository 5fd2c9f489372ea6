//! mqgate: an MQTT-aware layer-4 proxy and load balancer for Eclipse Mosquitto fleets.
//!
//! Data flow (see `LIFECYCLE.md` for one connection's life in detail):
//!
//! ```text
//!            config file ──watch/SIGHUP/API──▶ config (parse → validate) ─▶ reload (diff → apply)
//!                                                  │ ArcSwap<Runtime>
//!                                                  ▼
//! client ─▶ listener ─▶ [PROXY header] ─▶ [tls] ─▶ conn: read CONNECT (mqtt::connect, deadline, size cap)
//!                                                  │ mqtt::Connect { version, client_id, username, … }
//!                                                  ▼
//!                                     cluster::pick  ◀── health (one task per node → node states, leader)
//!                                       full-sync: the leader   ◀── sticky table ◀──▶ peers
//!                                       dynsec: sticky → balance      admin states (drain/maint)
//!                                                  │ Node
//!                                                  ▼
//!                             upstream connect (timeout, retries, [PROXY header out])
//!                                                  ▼
//!                             relay: original bytes, then both ways; CONNACK observed
//!                                                  │
//!       metrics registry ◀── every stage counts ──┘           admin (hyper): /metrics /status /api
//! ```
//!
//! The data path (listener → conn → relay) knows nothing about HTTP, peers or files:
//! it asks [`cluster`] for a node and counts into [`metrics`].
// One exception, with its SAFETY argument: `listener::watch`.
#![deny(unsafe_code)]
// No `unwrap()` on I/O or input: errors are handled or reported (unit tests may).
#![warn(clippy::unwrap_used)]

pub mod admin;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod fdlimit;
pub mod gateway;
pub mod handover;
pub mod health;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod mqtt;
pub mod peers;
pub mod plan;
pub mod proxy;
pub mod rate;
pub mod refused;
pub mod relay;
pub mod reload;
pub mod run;
pub mod runtime;
pub mod session;
pub mod sessions;
pub mod state;
pub mod sticky;
pub mod tls;
pub mod transport;
pub mod upstream;
pub mod workers;

pub use gateway::Gateway;
pub use run::{run, run_opts, RunOptions};
