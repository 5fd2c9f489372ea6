#!/usr/bin/env python3
"""Latency or throughput direct / through HAProxy / mqgate / the sockmap relay / the C
user-space relay (read/write, or splice), one stock Mosquitto behind all of them, rotating the order each round.
Uses integration/bench.d's templates and loadgen. One JSON line per run on stdout.

    drive.py REPO RELAY SCENARIO TARGETS   (SCENARIO: latency | tp-QOS-SIZE | fanin-QOS-SIZE;
                                           ROUNDS=3)

fanin-QOS-SIZE is the bench's `large` shape: 4 publishers -> 1 subscriber on a wildcard.
TARGETS: direct, haproxy, mqgate, sockmap, user, user16, splice, splice64k."""
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

repo, relay, mode, targets = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(",")
# The bench's own helpers: free ports, templates, CPU time of a process.
sys.path.insert(0, os.path.join(repo, "integration/bench.d"))
import bench  # noqa: E402
lg = os.path.join(repo, "target/loadgen/release/loadgen")
mqgate = os.environ.get("MQGATE_BENCH_BIN", os.path.join(repo, "target/release/mqgate"))
work = tempfile.mkdtemp(prefix="sockmap-")
rounds = int(os.environ.get("ROUNDS", "3"))

P = {k: bench.free_port() for k in [
    "broker_port", "broker_tls_port", "haproxy_port", "haproxy_tls_port",
    "mqgate_port", "mqgate_tls_port", "mqgate_ws_port", "admin_port", "sockmap", "user", "user16", "splice", "splice64k"]}
subprocess.run([lg, "pki", work], check=True, capture_output=True)
os.chmod(work, 0o755)  # Mosquitto drops to its own user and must read the certificate
for name in os.listdir(work):
    os.chmod(os.path.join(work, name), 0o644)
F = dict(P, cert=f"{work}/server.pem", key=f"{work}/server.key", cert_full=f"{work}/server-full.pem")
for n in ["mosquitto.conf", "haproxy.cfg", "mqgate.toml"]:
    with open(f"{work}/{n}", "w") as f:
        f.write(bench.render_template(n, F))
bp = str(P["broker_port"])
cmds = {"direct": ["mosquitto", "-c", f"{work}/mosquitto.conf"],
        "haproxy": ["haproxy", "-db", "-f", f"{work}/haproxy.cfg"],
        "mqgate": [mqgate, "run", "--config", f"{work}/mqgate.toml"],
        "sockmap": [relay, str(P["sockmap"]), bp],
        "user": [relay, str(P["user"]), bp, "user"],
        "splice": [relay, str(P["splice"]), bp, "splice"],
        "user16": [relay, str(P["user16"]), bp, "user16"],
        "splice64k": [relay, str(P["splice64k"]), bp, "splice64k"]}
port = {"direct": P["broker_port"], "haproxy": P["haproxy_port"], "mqgate": P["mqgate_port"],
        "sockmap": P["sockmap"], "user": P["user"], "splice": P["splice"],
        "user16": P["user16"], "splice64k": P["splice64k"]}
procs = {"direct": subprocess.Popen(cmds["direct"])}


def wait_port(p):
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", p), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {p}")


wait_port(P["broker_port"])
for t in targets:
    if t != "direct":
        procs[t] = subprocess.Popen(cmds[t])
for t in targets:
    wait_port(port[t])


def machine_cpu_secs():
    """Busy time of the whole machine (kernel threads and softirqs included)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / os.sysconf("SC_CLK_TCK")


try:
    for r in range(rounds):
        order = targets[r % len(targets):] + targets[:r % len(targets)]
        for t in order:
            a = f"127.0.0.1:{port[t]}"
            if mode == "latency":
                cmd = [lg, "latency", "--addr", a, "--rate", "20000"]
            else:
                shape, q, s = mode.split("-")
                cmd = [lg, "throughput", "--addr", a, "--qos", q, "--size", s,
                       "--shape", "fanin" if shape == "fanin" else "pairs"]
            m0, c0 = machine_cpu_secs(), bench.proc_cpu_secs(procs[t].pid)
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            m1, c1 = machine_cpu_secs(), bench.proc_cpu_secs(procs[t].pid)
            d = json.loads(out.strip().splitlines()[-1])
            d.update(target=t, round=r, machine_cpu_s=round(m1 - m0, 2),
                     proc_cpu_s=round(c1 - c0, 2))
            print(json.dumps(d), flush=True)
finally:
    for p in procs.values():
        p.terminate()
