#!/usr/bin/env python3
"""Where a proxy's added latency goes (issue 31): the fan-in latency shape (4
publishers -> 1 subscriber on a wildcard, 20,000 msg/s) right after a full-speed fan-in
run, through HAProxy and through mqgate with 1 and 2 connection threads, in paired
interleaved rounds; during each latency run, every thread's scheduler statistics
(/proc/PID/task/TID/schedstat: time on CPU, time waiting on a run queue, times
scheduled in) for the proxy and the broker. Run queue wait per time scheduled in is the
delay between a wake-up and running: the cost of sharing two vCPUs with the broker,
the load generator and anything else on the host.

  python3 integration/experiments/sched/where.py WORKDIR [ROUNDS]

WORKDIR: an `integration/bench` work dir (integration/out/bench-*.d) for its
mosquitto.conf and haproxy.cfg (same ports: run it when no bench is running). Prints a
table per target, medians over rounds; raw figures as JSON on the last line.
"""
import json, os, re, statistics, subprocess, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
LOADGEN = os.path.join(ROOT, "target/loadgen/release/loadgen")
MQGATE = os.environ.get("MQGATE_BIN", os.path.join(ROOT, "target/release/mqgate"))


def schedstat(pid):
    """{thread name: (on-CPU ns, run-queue wait ns, times scheduled in)}, summed per name."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                run, wait, slices = (int(x) for x in f.read().split())
        except OSError:
            continue
        name = re.sub(r"\d+$", "N", name) if name.startswith("tokio") else name
        a = out.get(name, (0, 0, 0))
        out[name] = (a[0] + run, a[1] + wait, a[2] + slices)
    return out


def lg(*args):
    r = subprocess.run([LOADGEN] + [str(a) for a in args], capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise SystemExit(f"loadgen {args}: {r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    work = sys.argv[1]
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    conf = open(os.path.join(work, "mosquitto.conf")).read()
    bport = int(re.search(r"^listener (\d+)", conf, re.M).group(1))
    hport = int(re.search(r"^\s*bind 127\.0\.0\.1:(\d+)\s*$", open(os.path.join(work, "haproxy.cfg")).read(), re.M).group(1))
    procs = {"broker": subprocess.Popen(["mosquitto", "-c", os.path.join(work, "mosquitto.conf")],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
             "haproxy": subprocess.Popen(["haproxy", "-db", "-f", os.path.join(work, "haproxy.cfg")],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)}
    addr = {"direct": bport, "haproxy": hport}
    for threads, port in [(1, hport + 7001), (2, hport + 7002)]:
        name = f"mqgate-t{threads}"
        path = os.path.join(work, f"{name}.toml")
        with open(path, "w") as f:
            f.write(f"[limits]\nthreads = {threads}\n\n[[listeners]]\nname = \"mqtt\"\n"
                    f"bind = \"127.0.0.1:{port}\"\ncluster = \"brokers\"\n\n[clusters.brokers]\n"
                    f"mode = \"dynsec\"\nnodes = [ {{ name = \"node1\", address = \"127.0.0.1:{bport}\" }} ]\n")
        procs[name] = subprocess.Popen([MQGATE, "run", "-c", path], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
        addr[name] = port
    raw = []
    try:
        time.sleep(2)
        targets = ["direct", "haproxy", "mqgate-t1", "mqgate-t2"]
        for rnd in range(rounds):
            k = rnd % len(targets)
            for t in targets[k:] + targets[:k]:
                a = f"127.0.0.1:{addr[t]}"
                lg("throughput", "--addr", a, "--shape", "fanin", "--secs", 3, "--warmup", 0.5)
                watch = {"broker": procs["broker"].pid}
                if t != "direct":
                    watch["proxy"] = procs[t].pid
                before = {w: schedstat(p) for w, p in watch.items()}
                r = lg("latency", "--addr", a, "--rate", 20000, "--pubs", 4, "--secs", 3, "--warmup", 0.5)
                after = {w: schedstat(p) for w, p in watch.items()}
                threads = {}
                for w in watch:
                    for name, (run1, wait1, sl1) in after[w].items():
                        run0, wait0, sl0 = before[w].get(name, (0, 0, 0))
                        threads[f"{w}:{name}"] = dict(cpu_ms=(run1 - run0) / 1e6,
                                                      wait_ms=(wait1 - wait0) / 1e6,
                                                      slices=sl1 - sl0)
                raw.append(dict(round=rnd, target=t, p50=r["p50_us"], p99=r["p99_us"],
                                msgs=r["received"], threads=threads))
                print(f"round {rnd} {t:10s} p50 {r['p50_us']} p99 {r['p99_us']}", file=sys.stderr, flush=True)
    finally:
        for p in procs.values():
            p.terminate()
            p.wait(10)
    print(f"{'target':10s} {'p50':>5s} {'p99':>6s}  thread: scheduled-in per 1k msgs, µs on CPU per scheduling, µs run-queue wait per scheduling")
    for t in ["direct", "haproxy", "mqgate-t1", "mqgate-t2"]:
        rs = [r for r in raw if r["target"] == t]
        p50 = statistics.median(r["p50"] for r in rs)
        p99 = statistics.median(r["p99"] for r in rs)
        names = sorted({n for r in rs for n, v in r["threads"].items() if v["slices"] > 0})
        parts = []
        for n in names:
            per_k = statistics.median(r["threads"][n]["slices"] * 1000 / r["msgs"] for r in rs if n in r["threads"])
            on = statistics.median(r["threads"][n]["cpu_ms"] * 1000 / max(r["threads"][n]["slices"], 1) for r in rs if n in r["threads"])
            wait = statistics.median(r["threads"][n]["wait_ms"] * 1000 / max(r["threads"][n]["slices"], 1) for r in rs if n in r["threads"])
            parts.append(f"{n} {per_k:.0f}/{on:.1f}/{wait:.1f}")
        print(f"{t:10s} {p50:5.0f} {p99:6.0f}  " + "; ".join(parts))
    print(json.dumps(raw))


if __name__ == "__main__":
    main()
