#!/usr/bin/env python3
"""Reconnect storm after a full-sync leader dies (integration/bench-storm; BENCHMARKS.md).

Three stock Mosquitto nodes in full-sync mode, simulated as tests/cluster_fullsync.rs
does: only the leader's client listener is open (node1 runs, node2 and node3 do not).
`loadgen failover` holds CLIENTS sessions through mqgate on node1; node1 is killed
(SIGKILL) and node2 starts at once (it opens its listener as the new leader). mqgate
closes the sessions, every client reconnects at once and retries with a jittered
exponential back-off (250 ms doubling to 4 s) after a refusal or a failure.

Run twice: without shaping, and with [clusters.ha.shaping] connect_rate / close_rate.
Reported per run: time from the kill until every client is served again, CONNACK p50/p99
of the accepted reconnects, attempts, "server busy" replies, failed connects (anything
else: reset, refused, timeout), and the peak CPU of the new leader's broker and of mqgate
(busiest 0.5 s window, sampled every 100 ms from /proc).
"""
import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_secs(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


class Sampler(threading.Thread):
    """CPU seconds of named processes every 100 ms; peak over any 0.5 s window."""

    def __init__(self):
        super().__init__(daemon=True)
        self.pids = {}
        self.samples = {}
        self.stop = threading.Event()

    def watch(self, name, pid):
        self.pids[name] = pid

    def run(self):
        while not self.stop.is_set():
            now = time.monotonic()
            for name, pid in list(self.pids.items()):
                c = cpu_secs(pid)
                if c is not None:
                    self.samples.setdefault(name, []).append((now, c))
            time.sleep(0.1)

    def peak(self, name, window=0.5):
        s = self.samples.get(name, [])
        best, j = 0.0, 0
        for i in range(len(s)):
            while j < i and s[i][0] - s[j][0] > window + 0.05:
                j += 1
            if i > j and s[i][0] - s[j][0] >= window - 0.05:
                best = max(best, (s[i][1] - s[j][1]) / (s[i][0] - s[j][0]))
        return round(best * 100, 1)

    def total(self, name):
        s = self.samples.get(name, [])
        return round(s[-1][1] - s[0][1], 2) if len(s) > 1 else None


def start_mosquitto(out, name, port, pki):
    conf = os.path.join(out, f"{name}.conf")
    with open(conf, "w") as f:
        f.write(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                "set_tcp_nodelay true\nlog_dest stderr\nlog_type error\nlog_type warning\n")
        if pki:
            f.write(f"certfile {pki}/server.pem\nkeyfile {pki}/server.key\n")
    log = open(os.path.join(out, f"{name}.log"), "ab")
    p = subprocess.Popen(["mosquitto", "-c", conf], stdout=log, stderr=log)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return p
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"{name} did not open port {port}")


def metrics(admin):
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as r:
        return r.read().decode()


def metric_sum(text, name, label=None):
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if label is None or label in line:
                total += float(line.rsplit(" ", 1)[1])
    return total


def run_once(a, out, shaped):
    tag = "shaped" if shaped else "unshaped"
    out = os.path.join(out, tag)
    os.makedirs(out, exist_ok=True)
    ports = {n: free_port() for n in ("node1", "node2", "node3")}
    listen, admin = free_port(), free_port()
    shaping = f'\n[clusters.ha.tls]\nca = "{a.pki}/ca.pem"\n' if a.pki else ""
    if shaped:
        shaping += (f"\n[clusters.ha.shaping]\nconnect_rate = {a.connect_rate}\n"
                   f"close_rate = {a.close_rate}\n")
    nodes = ", ".join(f'{{ name = "{n}", address = "127.0.0.1:{p}" }}' for n, p in ports.items())
    cfg = os.path.join(out, "mqgate.toml")
    with open(cfg, "w") as f:
        f.write(f"""[log]
level = "warn"

[limits]
max_connections = 9990

[admin]
bind = "127.0.0.1:{admin}"

[[listeners]]
name = "mqtt"
bind = "127.0.0.1:{listen}"
cluster = "ha"

[clusters.ha]
mode = "full-sync"
on_node_down = "disconnect"
queue_timeout = "10s"
nodes = [ {nodes} ]

[clusters.ha.health]
check = "mqtt"
interval = "1s"
fast_interval = "100ms"
down_interval = "200ms"
timeout = "500ms"
rise = 2
fall = 2
{shaping}""")
    procs = []
    try:
        node1 = start_mosquitto(out, "node1", ports["node1"], a.pki)
        procs.append(node1)
        glog = open(os.path.join(out, "mqgate.log"), "ab")
        gate = subprocess.Popen([a.mqgate, "run", "-c", cfg], stdout=glog, stderr=glog)
        procs.append(gate)
        deadline = time.monotonic() + 30
        while True:
            try:
                if metric_sum(metrics(admin), "mqgate_node_leader", 'node="node1"') == 1.0:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("node1 never became leader")
            time.sleep(0.1)
        lg = subprocess.Popen(
            [a.loadgen, "failover", "--addr", f"127.0.0.1:{listen}", "--clients", str(a.clients),
             "--conc", "64", "--secs", str(a.max_secs)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        procs.append(lg)
        ready = json.loads(lg.stdout.readline())
        if ready["ready"] != a.clients:
            raise RuntimeError(f"only {ready} sessions opened")
        sampler = Sampler()
        sampler.watch("mqgate", gate.pid)
        sampler.start()
        time.sleep(1.0)  # a quiet baseline in the samples
        # The leader dies; node2 opens its listener as the next leader.
        lg.stdin.write("go\n")
        lg.stdin.flush()
        node1.send_signal(signal.SIGKILL)
        node1.wait()
        node2 = start_mosquitto(out, "node2", ports["node2"], a.pki)
        procs.append(node2)
        sampler.watch("broker", node2.pid)
        res = json.loads(lg.stdout.readline())
        time.sleep(0.6)
        sampler.stop.set()
        sampler.join()
        m = metrics(admin)
        res.update({
            "run": tag,
            "clients_held": ready["ready"],
            "setup_s": ready["secs"],
            "broker_cpu_peak_pct": sampler.peak("broker"),
            "broker_cpu_s": sampler.total("broker"),
            "mqgate_cpu_peak_pct": sampler.peak("mqgate"),
            "mqgate_cpu_s": sampler.total("mqgate"),
            "gate_admissions_refused": metric_sum(m, "mqgate_admissions_refused_total"),
            "gate_sessions_to_node2": metric_sum(m, "mqgate_connections_total", 'node="node2"'),
        })
        if shaped:
            res["connect_rate"] = a.connect_rate
            res["close_rate"] = a.close_rate
        return res
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.kill()
                p.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mqgate", required=True)
    ap.add_argument("--loadgen", required=True)
    ap.add_argument("--clients", type=int, default=5000)
    ap.add_argument("--connect-rate", type=int, default=500)
    ap.add_argument("--close-rate", type=int, default=500)
    ap.add_argument("--max-secs", type=int, default=120)
    ap.add_argument("--only", choices=["shaped", "unshaped"])
    ap.add_argument("--plain-brokers", action="store_true",
                    help="mqgate to the brokers in plain TCP (default: TLS, [clusters.ha.tls])")
    a = ap.parse_args()
    out = os.path.join(ROOT, "integration", "out", time.strftime("storm-%Y%m%d-%H%M%S"))
    os.makedirs(out, exist_ok=True)
    a.pki = None
    if not a.plain_brokers:
        a.pki = os.path.join(out, "pki")
        subprocess.run([a.loadgen, "pki", a.pki], check=True)
    results = []
    for shaped in (False, True):
        if a.only and a.only != ("shaped" if shaped else "unshaped"):
            continue
        r = run_once(a, out, shaped)
        results.append(r)
        print(json.dumps(r), file=sys.stderr)
    with open(os.path.join(out, "storm.json"), "w") as f:
        json.dump({"clients": a.clients, "broker_tls": bool(a.pki), "load": os.getloadavg(), "runs": results}, f, indent=1)
    print(f"{'run':9s} {'all served':>10s} {'CONNACK p50':>11s} {'p99':>9s} {'attempts':>8s} "
          f"{'busy':>6s} {'failed':>6s} {'broker CPU peak':>15s} {'mqgate CPU peak':>15s}")
    for r in results:
        served = r["all_served_s"]
        served = f"{served:.2f} s" if served is not None else f"{r['served_again']}/{r['clients']}"
        print(f"{r['run']:9s} {served:>10s} {r['connack_p50_ms']:>8.1f} ms {r['connack_p99_ms']:>6.1f} ms "
              f"{r['attempts']:>8d} {r['busy_replies']:>6d} {r['failed_connects']:>6d} "
              f"{r['broker_cpu_peak_pct']:>13.1f} % {r['mqgate_cpu_peak_pct']:>13.1f} %")
        if r["failed_by_kind"]:
            print(f"          failed by kind: {r['failed_by_kind']}")
    print(f"raw figures: {os.path.join(out, 'storm.json')}")
    bad = [r for r in results if r["all_served_s"] is None]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
