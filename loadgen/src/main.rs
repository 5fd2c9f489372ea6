//! `loadgen`: the load generator of mqgate's benchmark harness (`integration/bench`).
//!
//! Raw MQTT 3.1.1 over TCP or TLS (rustls, ECDSA P-256 certificates from rcgen), and
//! over WebSocket with `--ws PATH` (every command; `ws.rs`), so that
//! what is measured is the broker and the proxy in front of it, not a client library.
//! Every measuring command prints one JSON object on stdout.
//!
//! ```text
//! loadgen pki DIR                                   write ca.pem, server.pem, server.key, server-full.pem
//! loadgen probe      --addr A [--tls-ca CA]         one session; exit 0 if CONNACK accepted
//! loadgen throughput --addr A [--shape pairs|fanin|fanout] [--pairs 4] [--qos 0] [--size 100]
//!                    [--window 400] [--warmup 1] [--secs 5] [--persistent 1]
//!                    (fanin: --pairs publishers → 1 subscriber on a wildcard; fanout:
//!                    1 publisher → --pairs subscribers)
//! loadgen latency    --addr A [--rate 20000] [--pubs 1] [--idle 0] [--size 100] [--warmup 1] [--secs 5]
//!                    (--pubs N: N publishers at rate/N each → 1 subscriber on a wildcard;
//!                    --idle N: N idle sessions held open beside the traffic)
//! loadgen fanin      --nodes A,B,C --via G [--client-id backend-bench] [--qos 1] [--size 100]
//!                    [--window 400] [--warmup 1] [--secs 5] [--rounds 3] [--via-b G2]
//!                    (one publisher per node; the backend through G's fan-out vs direct;
//!                    --via-b: a second gateway in the same rounds, A/B)
//! loadgen connect    --addr A [--tls-ca CA] [--clients 5000] [--conc 50] [--secs 10]
//! loadgen idle       --addr A [--clients 1000] [--conc 64]   (holds them until a line on stdin)
//! loadgen failover   --addr A [--clients 5000] [--conc 64] [--backoff-ms 250] [--max-backoff-ms 4000]
//!                    [--attempt-timeout 10] [--secs 120]
//!                    (opens them, prints {"ready":N}; after a line on stdin waits for the
//!                    gateway to close them and for every client to be served again)
//! ```

mod closedloop;
mod failover;
mod fanin;
mod latency;
mod mqtt;
mod net;
mod storm;
mod throughput;
mod ws;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

struct Args {
    cmd: String,
    pos: Vec<String>,
    kv: HashMap<String, String>,
}

impl Args {
    fn parse() -> Result<Args, String> {
        let mut it = std::env::args().skip(1);
        let cmd = it.next().ok_or("usage: loadgen COMMAND [--key value]...")?;
        let mut pos = Vec::new();
        let mut kv = HashMap::new();
        while let Some(a) = it.next() {
            if let Some(k) = a.strip_prefix("--") {
                let v = it.next().ok_or(format!("--{k} needs a value"))?;
                kv.insert(k.to_string(), v);
            } else {
                pos.push(a);
            }
        }
        Ok(Args { cmd, pos, kv })
    }

    fn get<T: std::str::FromStr>(&self, k: &str, default: T) -> Result<T, String> {
        match self.kv.get(k) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| format!("--{k}: cannot parse {v:?}")),
        }
    }

    fn secs(&self, k: &str, default: f64) -> Result<Duration, String> {
        Ok(Duration::from_secs_f64(self.get(k, default)?))
    }

    fn addr(&self) -> Result<SocketAddr, String> {
        let a = self.kv.get("addr").ok_or("--addr HOST:PORT is required")?;
        a.parse().map_err(|e| format!("--addr {a}: {e}"))
    }

    fn target(&self) -> Result<net::Target, String> {
        let mut t = net::Target::new(
            self.addr()?,
            self.kv.get("tls-ca").map(|s| s.as_str()),
            self.kv.get("ws").map(|s| s.as_str()),
        )?;
        t.persistent = self.get("persistent", 0u8)? == 1;
        Ok(t)
    }
}

fn pki(dir: &str) -> Result<(), String> {
    let e = |e: rcgen::Error| e.to_string();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "mqgate bench CA");
    // KeyPair::generate() is ECDSA P-256 with SHA-256.
    let ca_key = rcgen::KeyPair::generate().map_err(e)?;
    let ca_cert = ca.self_signed(&ca_key).map_err(e)?;
    let mut leaf =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .map_err(e)?;
    leaf.distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    let key = rcgen::KeyPair::generate().map_err(e)?;
    let cert = leaf.signed_by(&key, &ca_cert, &ca_key).map_err(e)?;
    let dir = std::path::Path::new(dir);
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let write = |name: &str, text: String| {
        std::fs::write(dir.join(name), text).map_err(|e| format!("{name}: {e}"))
    };
    write("ca.pem", ca_cert.pem())?;
    write("server.pem", cert.pem())?;
    write("server.key", key.serialize_pem())?;
    write(
        "server-full.pem",
        format!("{}{}", cert.pem(), key.serialize_pem()),
    )?;
    Ok(())
}

fn main() -> ExitCode {
    match real_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))
}

fn real_main() -> Result<(), String> {
    let a = Args::parse()?;
    let out = match a.cmd.as_str() {
        "pki" => return pki(a.pos.first().ok_or("usage: loadgen pki DIR")?),
        "probe" => {
            let t = a.target()?;
            return runtime()?.block_on(async {
                tokio::time::timeout(Duration::from_secs(2), t.session("bench-probe", false))
                    .await
                    .map_err(|_| "timed out".to_string())?
                    .map(drop)
                    .map_err(|e| e.to_string())
            });
        }
        "throughput" => {
            let t = a.target()?;
            let o = throughput::Opts {
                shape: a.get("shape", throughput::Shape::Pairs)?,
                pairs: a.get("pairs", 4)?,
                qos: a.get("qos", 0)?,
                size: a.get("size", 100)?,
                window: a.get("window", 400)?,
                warmup: a.secs("warmup", 1.0)?,
                secs: a.secs("secs", 5.0)?,
            };
            runtime()?.block_on(throughput::run(t, o))?
        }
        "fanin" => {
            let list = |k: &str| -> Result<Vec<SocketAddr>, String> {
                a.kv.get(k)
                    .ok_or(format!("--{k} is required"))?
                    .split(',')
                    .map(|x| x.parse().map_err(|e| format!("--{k} {x}: {e}")))
                    .collect()
            };
            let o = fanin::Opts {
                nodes: list("nodes")?,
                via: list("via")?
                    .into_iter()
                    .next()
                    .ok_or("--via HOST:PORT is required")?,
                via_b: match a.kv.get("via-b") {
                    Some(_) => list("via-b")?.into_iter().next(),
                    None => None,
                },
                client_id: a.get("client-id", "backend-bench".to_string())?,
                qos: a.get("qos", 1)?,
                size: a.get("size", 100)?,
                window: a.get("window", 400)?,
                warmup: a.secs("warmup", 1.0)?,
                secs: a.secs("secs", 5.0)?,
                rounds: a.get("rounds", 3)?,
                node_pids: match a.kv.get("node-pids") {
                    Some(v) => v
                        .split(',')
                        .map(|x| x.parse().map_err(|e| format!("--node-pids {x}: {e}")))
                        .collect::<Result<_, String>>()?,
                    None => Vec::new(),
                },
            };
            runtime()?.block_on(fanin::run(o))?
        }
        "latency" => latency::run(
            a.addr()?,
            a.kv.get("ws").map(|s| s.as_str()),
            latency::Opts {
                rate: a.get("rate", 20_000)?,
                pubs: a.get("pubs", 1)?,
                idle: a.get("idle", 0)?,
                size: a.get("size", 100)?,
                warmup: a.secs("warmup", 1.0)?,
                secs: a.secs("secs", 5.0)?,
            },
        )?,
        "connect" => {
            let t = a.target()?;
            runtime()?.block_on(storm::connect_storm(
                t,
                a.get("clients", 5000)?,
                a.get("conc", 50)?,
                a.secs("secs", 10.0)?,
            ))?
        }
        "idle" => {
            let t = a.target()?;
            return runtime()?.block_on(storm::idle(
                t,
                a.get("clients", 1000)?,
                a.get("conc", 64)?,
            ));
        }
        "failover" => {
            let t = a.target()?;
            runtime()?.block_on(failover::run(
                t,
                failover::Opts {
                    clients: a.get("clients", 5000)?,
                    conc: a.get("conc", 64)?,
                    backoff: Duration::from_millis(a.get("backoff-ms", 250)?),
                    max_backoff: Duration::from_millis(a.get("max-backoff-ms", 4000)?),
                    attempt_timeout: a.secs("attempt-timeout", 10.0)?,
                    secs: a.secs("secs", 120.0)?,
                },
            ))?
        }
        other => return Err(format!("unknown command {other:?}")),
    };
    println!("{out}");
    Ok(())
}
