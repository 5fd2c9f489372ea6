#!/usr/bin/env python3
"""mqgate benchmark harness (run through `integration/bench`, which builds the binaries
and raises the open-files limit first).

Starts one stock Mosquitto, HAProxy 2.6 (configured as the Mosquitto HA documentation
does) and mqgate (equivalent config) on free ports, then measures every scenario
directly, through HAProxy and through mqgate, alternating the order each round, and
prints the medians over rounds and the ratios against the targets of issue 7. MQTT over
WebSocket through mqgate (`mqgate-ws`: the same process, its `ws` listener) runs the
throughput, latency and idle scenarios beside mqgate over TCP, against the targets of
issue 25 (Debian's Mosquitto cannot open a WebSocket listener, so there is no broker
figure to set beside it). Writes
every raw figure and the summary to integration/out/bench-<time>.json.

Nothing here asserts on speed: the exit status is 1 only if the harness itself fails
(a process does not start, a scenario moves no messages, connections are refused).
"""
import argparse, datetime, json, os, platform, random, resource, socket, statistics, subprocess, sys, time

import shapes

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
TARGETS = ["direct", "haproxy", "mqgate"]
PROXIES = ["haproxy", "mqgate"]
WS = "mqgate-ws"  # mqgate's WebSocket listener: a pseudo-target of the mqgate process


class HarnessError(Exception):
    pass


_given_ports = set()


def free_port():
    """A free port below the kernel's ephemeral range: a port-0 pick can be taken
    as the source port of an outgoing connection before the real bind."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            eph_low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        eph_low = 32768
    for _ in range(1000):
        p = random.randrange(10000, max(eph_low, 11000))
        if p in _given_ports:
            continue
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", p))
        except OSError:
            continue
        finally:
            s.close()
        _given_ports.add(p)
        return p
    raise HarnessError("no free port below the ephemeral range")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def proc_cpu_secs(pid):
    """utime + stime of a process (all threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_secs():
    """utime + stime of this script's waited-for children (the load generator runs)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def proc_rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise HarnessError(f"no VmRSS for pid {pid}")


def render_template(tmpl, values, section=None, extra=None):
    """The text of bench.d/<tmpl>.tmpl with each `{key}` replaced by its value, and the
    lines `extra` (if given) added at the top of `section`: [limits] for --ab, HAProxy's
    global for --haproxy-global. Also used by integration/experiments/relay/drive.py."""
    with open(os.path.join(HERE, tmpl + ".tmpl")) as f:
        text = f.read()
    for k, v in values.items():
        text = text.replace("{" + k + "}", str(v))
    if extra is not None:
        if section not in text:
            raise HarnessError(f"{tmpl}.tmpl has no {section.strip()!r} section")
        text = text.replace(section, section + extra + "\n", 1)
    return text


class Env:
    """The three servers and their ports; restartable proxies."""

    def __init__(self, a, work):
        self.a = a
        self.work = work
        self.loadgen = a.loadgen
        self.procs = {}
        p = self.ports = {k: free_port() for k in [
            "broker_port", "broker_tls_port", "haproxy_port", "haproxy_tls_port",
            "mqgate_port", "mqgate_tls_port", "mqgate_ws_port", "admin_port",
            "mqgate_b_port", "mqgate_b_tls_port", "mqgate_b_ws_port", "admin_b_port",
            "mqgate_tlsup_port"]}
        self.files = dict(
            cert=os.path.join(work, "server.pem"), key=os.path.join(work, "server.key"),
            cert_full=os.path.join(work, "server-full.pem"), ca=os.path.join(work, "ca.pem"))
        run([self.loadgen, "pki", work])
        os.chmod(work, 0o755)
        for f in self.files.values():
            os.chmod(f, 0o644)
        fill = dict(p, **self.files)

        def render(tmpl, out, values, section=None, extra=None):
            with open(os.path.join(work, out), "w") as f:
                f.write(render_template(tmpl, values, section, extra))

        for name in ["mosquitto.conf", "mqgate.toml"]:
            render(name, name, fill)
        if a.broker_tls:
            # --broker-tls: a second TLS listener whose cluster reaches the same broker
            # over TLS ([clusters.X.tls]), for the `tlsup` scenario (TLS on both sides).
            with open(os.path.join(work, "mqgate.toml"), "a") as f:
                f.write(render_template("mqgate-tlsup.toml", fill))
        hap_global = None
        if a.haproxy_global:
            hap_global = "\n".join("    " + line.strip()
                                   for line in a.haproxy_global.split(";") if line.strip())
        render("haproxy.cfg", "haproxy.cfg", fill, "\nglobal\n", hap_global)
        if a.ab is not None:
            # The A/B variant: the same template on its own ports, with the --ab lines
            # added to [limits].
            fill_b = dict(fill, mqgate_port=p["mqgate_b_port"],
                          mqgate_tls_port=p["mqgate_b_tls_port"], admin_port=p["admin_b_port"],
                          mqgate_ws_port=p["mqgate_b_ws_port"])
            render("mqgate-tuned.toml" if a.ab_tuned else "mqgate.toml", "mqgate-b.toml",
                   fill_b, a.ab_section + "\n", a.ab.replace(";", "\n"))
            if a.ab_sessions:
                # Packet-aware relay for mqgate-b: persistent clients (--persistent) of a
                # cluster with restore_subscriptions; mqgate (A) keeps the byte relay.
                with open(os.path.join(work, "mqgate-b.toml"), "a") as f:
                    f.write("\n[clusters.brokers.sessions]\nrestore_subscriptions = true\n")
        self.addr = {
            "direct": f"127.0.0.1:{p['broker_port']}",
            "haproxy": f"127.0.0.1:{p['haproxy_port']}",
            "mqgate": f"127.0.0.1:{p['mqgate_port']}",
            "mqgate-b": f"127.0.0.1:{p['mqgate_b_port']}",
            WS: f"127.0.0.1:{p['mqgate_ws_port']}",
        }
        self.tls_addr = {
            "direct": f"127.0.0.1:{p['broker_tls_port']}",
            "haproxy": f"127.0.0.1:{p['haproxy_tls_port']}",
            "mqgate": f"127.0.0.1:{p['mqgate_tls_port']}",
            "mqgate-b": f"127.0.0.1:{p['mqgate_b_tls_port']}",
        }
        self.tlsup_addr = f"127.0.0.1:{p['mqgate_tlsup_port']}"
        run(["haproxy", "-c", "-q", "-f", os.path.join(work, "haproxy.cfg")])
        run([a.mqgate, "check", "-c", os.path.join(work, "mqgate.toml")])
        if a.ab is not None:
            run([a.ab_bin or a.mqgate, "check", "-c", os.path.join(work, "mqgate-b.toml")])

    @staticmethod
    def proc_name(target):
        """The process behind a target (mqgate-ws is mqgate's WebSocket listener)."""
        return "mqgate" if target == WS else target

    @staticmethod
    def extra(target):
        """Extra loadgen arguments for a target."""
        return ["--ws", "/mqtt"] if target == WS else []

    def cmd(self, name):
        w = self.work
        return {
            "direct": ["mosquitto", "-c", os.path.join(w, "mosquitto.conf")],
            "haproxy": ["haproxy", "-db", "-f", os.path.join(w, "haproxy.cfg")],
            "mqgate": [self.a.mqgate, "run", "-c", os.path.join(w, "mqgate.toml")],
            "mqgate-b": [self.a.ab_bin or self.a.mqgate, "run", "-c", os.path.join(w, "mqgate-b.toml")],
        }[name]

    def start(self, name):
        logf = open(os.path.join(self.work, f"{name}.log"), "a")
        self.procs[name] = subprocess.Popen(self.cmd(name), stdout=logf, stderr=logf,
                                            stdin=subprocess.DEVNULL)
        self.wait_ready(name)

    def wait_ready(self, name):
        end = time.time() + 30
        probes = [(self.addr[name], []), (self.tls_addr[name], ["--tls-ca", self.files["ca"]])]
        if name == "mqgate" and self.a.broker_tls:
            probes.append((self.tlsup_addr, ["--tls-ca", self.files["ca"]]))
        while time.time() < end:
            pr = self.procs[name]
            if pr.poll() is not None:
                raise HarnessError(f"{name} exited with {pr.returncode}; see {self.work}/{name}.log")
            probes = [(self.addr[name], []), (self.tls_addr[name], ["--tls-ca", self.files["ca"]])]
            if name == "mqgate":
                probes.append((self.addr[WS], self.extra(WS)))
            ok = all(subprocess.run(
                [self.loadgen, "probe", "--addr", addr] + extra,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
                for addr, extra in probes)
            if ok:
                return
            time.sleep(0.1)
        raise HarnessError(f"{name} did not accept MQTT sessions within 30 s")

    def stop(self, name):
        pr = self.procs.pop(name, None)
        if pr and pr.poll() is None:
            pr.terminate()
            try:
                pr.wait(10)
            except subprocess.TimeoutExpired:
                pr.kill()
                pr.wait()

    def restart(self, name):
        name = self.proc_name(name)
        self.stop(name)
        self.start(name)

    def pid(self, name):
        return self.procs[self.proc_name(name)].pid

    def stop_all(self):
        for n in list(self.procs):
            self.stop(n)


def run(cmd, timeout=600):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise HarnessError(f"{' '.join(map(str, cmd))} failed ({r.returncode}): {r.stderr.strip()}")
    return r.stdout


def loadgen(env, args, timeout=300):
    out = run([env.loadgen] + [str(x) for x in args], timeout)
    return json.loads(out.strip().splitlines()[-1])


def plan(quick):
    """What each scenario runs. Shapes (issue 31): `throughput` is 4 publisher →
    subscriber pairs; `fanin` 4 publishers → 1 subscriber on a wildcard; `fanout` 1
    publisher → 4 subscribers; `large` fan-in of 64 KB and 1 MB messages (MB/s);
    `rates` fan-in latency at fixed total rates, the last one with idle sessions held
    open beside the traffic, each right after a full-speed fan-in run through the same
    target (`after_load`)."""
    if quick:
        return dict(rounds=1, tp=[(0, 100)], tp_secs=1, warmup=0.5, lat_rate=5000, lat_secs=1,
                    plain_clients=1000, tls_clients=200, idle=[200], conc=32,
                    fanin=[(0, 100)], fanout=[(0, 100)], large=[],
                    rates=[("20k+idle200", 20000, 200)], rate_secs=1, load_secs=0.5)
    return dict(rounds=3, tp=[(0, 100), (0, 1024), (1, 100), (1, 1024)], tp_secs=5, warmup=1,
                lat_rate=20000, lat_secs=5, plain_clients=10000, tls_clients=3000,
                idle=[1000, 9000], conc=50,
                fanin=[(0, 100), (1, 100)], fanout=[(0, 100), (1, 100)],
                large=[("64KB", 65536), ("1MB", 1048576)],
                rates=[("1k", 1000, 0), ("5k", 5000, 0), ("20k", 20000, 0),
                       ("20k+idle1000", 20000, 1000)], rate_secs=5, load_secs=3)


# Every scenario --only knows; the default runs all of them.
SCENARIOS = ["throughput", "fanin", "fanout", "large", "latency", "rates", "connect", "idle", "ws"]
# Throughput shapes: scenario name → loadgen --shape.
TP_SHAPES = {"throughput": "pairs", "fanin": "fanin", "fanout": "fanout", "large": "fanin"}


def scenario_throughput(env, p, target, qos, size, shape="pairs", secs=None):
    pid = env.pid(target)
    bpid = env.pid("direct")
    c0, b0 = proc_cpu_secs(pid), proc_cpu_secs(bpid)
    r = loadgen(env, ["throughput", "--addr", env.addr[target], "--qos", qos, "--size", size,
                      "--shape", shape, "--secs", secs or p["tp_secs"],
                      "--warmup", p["warmup"]] + env.extra(target)
                + (["--persistent", 1] if env.a.ab_sessions else []))
    c1, b1 = proc_cpu_secs(pid), proc_cpu_secs(bpid)
    if r["delivered"] == 0:
        raise HarnessError(f"throughput through {target} delivered nothing: {r}")
    per_m = 1e6 / max(r["delivered_total"], 1)
    r["broker_cpu_s_per_M"] = (b1 - b0) * per_m
    if target != "direct":
        r["proxy_cpu_s_per_M"] = (c1 - c0) * per_m
    return r


def scenario_tlsup(env, p, variant):
    """--broker-tls: QoS 0 100 B throughput through mqgate, client→mqgate→broker plain
    (`plain`), TLS to mqgate only (`tls-in`) or TLS on both sides (`tls-both`), with
    mqgate's CPU per million messages delivered."""
    addr, extra = {
        "plain": (env.addr["mqgate"], []),
        "tls-in": (env.tls_addr["mqgate"], ["--tls-ca", env.files["ca"]]),
        "tls-both": (env.tlsup_addr, ["--tls-ca", env.files["ca"]]),
    }[variant]
    pid = env.pid("mqgate")
    c0 = proc_cpu_secs(pid)
    r = loadgen(env, ["throughput", "--addr", addr, "--qos", 0, "--size", 100,
                      "--secs", p["tp_secs"], "--warmup", p["warmup"]] + extra)
    c1 = proc_cpu_secs(pid)
    if r["delivered"] == 0:
        raise HarnessError(f"tlsup {variant} delivered nothing: {r}")
    r["proxy_cpu_s_per_M"] = (c1 - c0) * 1e6 / max(r["delivered_total"], 1)
    return r


TLSUP_VARIANTS = ["plain", "tls-in", "tls-both"]


def print_tlsup(raw):
    print()
    print("TLS to the brokers (--broker-tls): mqgate, QoS 0 100 B, medians of rounds")
    base = None
    for var in TLSUP_VARIANTS:
        rs = [r["result"] for r in raw if r["scenario"] == "tlsup" and r["variant"] == var]
        if not rs:
            continue
        mps = med([r.get("msgs_per_sec") for r in rs])
        cpu = med([r.get("proxy_cpu_s_per_M") for r in rs])
        if base is None:
            base = cpu
        q = cpu / base if base and cpu is not None else None
        print(f"  {var:10s} msgs/s {fmt(mps):>11s}   mqgate CPU s per M msgs {fmt(cpu):>8s}"
              f"   x plain {fmt(q)}")


def scenario_latency(env, p, target, after_load=False):
    if after_load:
        scenario_throughput(env, p, target, 0, 100, "fanin", p["load_secs"])
    r = loadgen(env, ["latency", "--addr", env.addr[target], "--rate", p["lat_rate"],
                      "--secs", p["lat_secs"], "--warmup", p["warmup"]] + env.extra(target))
    if r["samples"] == 0:
        raise HarnessError(f"latency through {target}: no message delivered: {r}")
    r["after_load"] = after_load
    return r


def scenario_rate(env, p, target, rate, idle, after_load):
    """Fan-in latency (4 publishers at rate/4 each → 1 subscriber on a wildcard), with
    `idle` sessions held open beside it; first, if `after_load`, a full-speed fan-in
    throughput run through the same target (as a harness running scenarios back to
    back does: issue 31 found the one-thread default loses there). CPU per message:
    the proxy's (or, direct, the broker's) over the latency run, idle sessions'
    set-up included."""
    if after_load:
        scenario_throughput(env, p, target, 0, 100, "fanin", p["load_secs"])
    pid = env.pid(target)
    c0 = proc_cpu_secs(pid)
    r = loadgen(env, ["latency", "--addr", env.addr[target], "--rate", rate, "--pubs", 4,
                      "--idle", idle, "--secs", p["rate_secs"], "--warmup", p["warmup"]]
                + env.extra(target), timeout=600)
    c1 = proc_cpu_secs(pid)
    if r["samples"] == 0:
        raise HarnessError(f"rate {rate} through {target}: no message delivered: {r}")
    r["cpu_us_per_msg"] = (c1 - c0) * 1e6 / max(r["received"], 1)
    r["after_load"] = after_load
    return r


def scenario_connect(env, p, target, tls):
    if tls:
        args = ["--addr", env.tls_addr[target], "--tls-ca", env.files["ca"],
                "--clients", p["tls_clients"]]
    else:
        args = ["--addr", env.addr[target], "--clients", p["plain_clients"]]
    pid, bpid = env.pid(target), env.pid("direct")
    c0, b0, l0 = proc_cpu_secs(pid), proc_cpu_secs(bpid), children_cpu_secs()
    r = loadgen(env, ["connect", "--conc", p["conc"], "--secs", 20] + args)
    c1, b1, l1 = proc_cpu_secs(pid), proc_cpu_secs(bpid), children_cpu_secs()
    if r["ok"] == 0 or r["errors"] > 0:
        raise HarnessError(f"connect storm through {target} (tls={tls}) had errors: {r}")
    # Where the two vCPUs went, per completed session (µs): the shared machine's budget.
    per = 1e6 / r["ok"]
    r["broker_cpu_us_per_connect"] = (b1 - b0) * per
    r["loadgen_cpu_us_per_connect"] = (l1 - l0) * per
    if target != "direct":
        r["proxy_cpu_us_per_connect"] = (c1 - c0) * per
    return r


def wait_rss_stable(pid):
    last = proc_rss_kb(pid)
    for _ in range(30):
        time.sleep(0.2)
        now = proc_rss_kb(pid)
        if abs(now - last) <= max(last // 500, 8):
            return now
        last = now
    return last


def scenario_idle(env, target, n):
    """Fresh proxy process; RSS before, N idle proxied sessions, RSS after."""
    env.restart(target)
    pid = env.pid(target)
    before = wait_rss_stable(pid)
    lg = subprocess.Popen([env.loadgen, "idle", "--addr", env.addr[target], "--clients", str(n)]
                          + env.extra(target),
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = lg.stdout.readline()
        if not line:
            raise HarnessError(f"idle loadgen through {target} exited early")
        ready = json.loads(line)
        if ready["ready"] != n:
            raise HarnessError(f"idle through {target}: only {ready['ready']} of {n} connected: {ready}")
        after = wait_rss_stable(pid)
    finally:
        try:
            lg.stdin.write("\n")
            lg.stdin.close()
        except OSError:
            pass
        lg.wait(60)
    return {"connections": n, "rss_before_kb": before, "rss_after_kb": after,
            "bytes_per_conn": (after - before) * 1024 / n}


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def per_round(raw, scn, var, key, targets):
    """{round: {target: figure}}: one figure of one scenario for these targets."""
    by_round = {}
    for r in raw:
        if r["scenario"] == scn and r["variant"] == var and r["target"] in targets:
            by_round.setdefault(r["round"], {})[r["target"]] = r["result"].get(key)
    return by_round.values()


def paired_added(raw, key, target):
    """Median over rounds of (target's latency figure - direct's) in the same round."""
    return med([v[target] - v["direct"]
                for v in per_round(raw, "latency", "qos0-100B", key, ("direct", target))
                if v.get(target) is not None and v.get("direct") is not None])


def paired_ratio(raw, scn, var, key, num, den):
    """Median over rounds of num's figure / den's figure in the same round."""
    return med([v[num] / v[den] for v in per_round(raw, scn, var, key, (num, den))
                if v.get(num) is not None and v.get(den)])


def summarise_paired(raw, p):
    """The ratios of the target lines that compare rates, paired by round: each
    round's mqgate figure over that round's direct (throughput) or HAProxy (connects)
    figure, then the median. Less exposed to a host whose speed drifts between rounds
    than the ratio of medians that the target lines use; shown for information."""
    out = []
    for qos, size in p["tp"]:
        var = f"qos{qos}-{size}B"
        out.append((f"throughput {var}: mqgate/direct",
                    paired_ratio(raw, "throughput", var, "msgs_per_sec", "mqgate", "direct")))
    for scn, var, key, _unit in shapes.tp_variants(p):
        v = paired_ratio(raw, scn, var, key, "mqgate", "direct")
        if v is not None:
            out.append((f"{scn} {var}: mqgate/direct", v))
    for var in ["plain", "tls"]:
        out.append((f"connect {var}: mqgate/haproxy",
                    paired_ratio(raw, "connect", var, "connects_per_sec", "mqgate", "haproxy")))
    return out


def print_paired(paired):
    print()
    print("paired by round (median of each round's ratio; for information):")
    for name, val in paired:
        print(f"  {name:52s} {fmt(val):>8s}")


def summarise(raw, p):
    def pick(scn, var, target, key):
        return med([r["result"].get(key) for r in raw
                    if r["scenario"] == scn and r["variant"] == var and r["target"] == target])

    rows, checks = [], []

    def ratio(a, b):
        return a / b if a is not None and b not in (None, 0) else None

    for qos, size in p["tp"]:
        var = f"qos{qos}-{size}B"
        d, h, m = (pick("throughput", var, t, "msgs_per_sec") for t in TARGETS)
        rows.append((f"throughput {var} msg/s", d, h, m, ratio(h, d), ratio(m, d)))
        checks.append((f"throughput {var}: mqgate/direct >= 0.98", ratio(m, d), ">=", 0.98))
    lat = {}
    for key in ["p50_us", "p99_us", "p999_us"]:
        d, h, m = (pick("latency", "qos0-100B", t, key) for t in TARGETS)
        lat[key] = (d, h, m)
        rows.append((f"latency {key[:-3]} µs @{p['lat_rate']}/s", d, h, m, None, None))
    for key in ["p50_us", "p99_us", "p999_us"]:
        d, h, m = lat[key]
        ha, ma = (h - d if None not in (h, d) else None), (m - d if None not in (m, d) else None)
        rows.append((f"  added {key[:-3]} µs", 0, ha, ma, None, ratio(ma, ha) if ha and ha > 0 else None))
        if key != "p999_us":
            checks.append((f"added latency {key[:-3]}: mqgate/haproxy <= 0.7",
                           ratio(ma, ha) if ha and ha > 0 else None, "<=", 0.7))
    # The same, paired by round: each round's proxy figure minus that round's direct
    # one, then the median. On a host whose latency drifts between rounds this is less
    # noisy than the difference of the medians above (shown for information; the
    # target line above keeps the difference of medians).
    for key in ["p50_us", "p99_us"]:
        ha, ma = (paired_added(raw, key, t) for t in PROXIES)
        rows.append((f"  added {key[:-3]} µs, paired by round", 0, ha, ma, None,
                     ratio(ma, ha) if ha and ha > 0 else None))
    for var, want in [("plain", 1.5), ("tls", 1.3)]:
        d, h, m = (pick("connect", var, t, "connects_per_sec") for t in TARGETS)
        rows.append((f"connect {var} /s", d, h, m, ratio(h, d), ratio(m, d)))
        d9, h9, m9 = (pick("connect", var, t, "p99_us") for t in TARGETS)
        rows.append((f"  connect {var} p99 µs", d9, h9, m9, None, None))
        checks.append((f"connect {var}: mqgate/haproxy >= {want}", ratio(m, h), ">=", want))
        # Where the shared CPUs went per session: the proxy's own (direct column: the
        # broker's, for scale).
        h, m = (pick("connect", var, t, "proxy_cpu_us_per_connect") for t in PROXIES)
        d = pick("connect", var, "direct", "broker_cpu_us_per_connect")
        rows.append((f"  connect {var} CPU µs/session", d, h, m, None, ratio(m, h)))
    shape_rows, shape_checks = shapes.summarise_shapes(raw, p)
    rows += shape_rows
    checks += shape_checks
    for n in p["idle"]:
        h, m = (pick("idle", f"{n}", t, "bytes_per_conn") for t in PROXIES)
        rows.append((f"idle memory B/conn @{n}", None, h, m, None, None))
        checks.append((f"idle memory @{n}: mqgate/haproxy <= 0.4", ratio(m, h), "<=", 0.4))
    for qos, size in p["tp"]:
        var = f"qos{qos}-{size}B"
        h, m = (pick("throughput", var, t, "proxy_cpu_s_per_M") for t in PROXIES)
        d = pick("throughput", var, "direct", "broker_cpu_s_per_M")
        rows.append((f"CPU s per M msgs {var}", d, h, m, None, None))
        checks.append((f"CPU per M msgs {var}: mqgate/haproxy <= 1", ratio(m, h), "<=", 1.0))
    return rows, checks


def summarise_ws(raw, p):
    """MQTT over WebSocket through mqgate against TCP through mqgate (issue 25): rows
    (figure, tcp, ws, ws/tcp or ws-tcp) and target lines."""
    def pick(scn, var, target, key):
        return med([r["result"].get(key) for r in raw
                    if r["scenario"] == scn and r["variant"] == var and r["target"] == target])

    rows, checks = [], []
    for qos, size in p["tp"]:
        var = f"qos{qos}-{size}B"
        t, w = (pick("throughput", var, x, "msgs_per_sec") for x in ("mqgate", WS))
        q = w / t if None not in (t, w) and t else None
        rows.append((f"throughput {var} msg/s", t, w, q))
        checks.append((f"websocket throughput {var}: ws/tcp >= 0.9", q, ">=", 0.9))
        t, w = (pick("throughput", var, x, "proxy_cpu_s_per_M") for x in ("mqgate", WS))
        rows.append((f"  CPU s per M msgs {var}", t, w, w / t if None not in (t, w) and t else None))
    for key in ["p50_us", "p99_us"]:
        d, t, w = (pick("latency", "qos0-100B", x, key) for x in ("direct", "mqgate", WS))
        ta, wa = (x - d if None not in (x, d) else None for x in (t, w))
        diff = wa - ta if None not in (ta, wa) else None
        rows.append((f"added latency {key[:-3]} µs (ws-tcp)", ta, wa, diff))
        if key == "p50_us":
            checks.append(("websocket added latency p50: ws - tcp <= 20 µs", diff, "<=", 20))
    for n in p["idle"]:
        t, w = (pick("idle", f"{n}", x, "bytes_per_conn") for x in ("mqgate", WS))
        q = w / t if None not in (t, w) and t else None
        rows.append((f"idle memory B/conn @{n}", t, w, q))
        checks.append((f"websocket idle memory @{n}: ws/tcp <= 1.5", q, "<=", 1.5))
    return rows, checks


def print_ws(rows):
    print()
    print("MQTT over WebSocket through mqgate vs TCP through mqgate (medians; no broker"
          " figure: Debian's Mosquitto has no WebSocket listener)")
    print(f"  {'figure':44s} {'tcp':>11s} {'ws':>11s}   ws/tcp (latency: ws-tcp)")
    for name, t, w, q in rows:
        print(f"  {name:44s} {fmt(t):>11s} {fmt(w):>11s}   {fmt(q)}")


AB_KEYS = {"throughput": ["msgs_per_sec", "proxy_cpu_s_per_M"],
           "fanin": ["msgs_per_sec", "proxy_cpu_s_per_M"],
           "fanout": ["msgs_per_sec", "proxy_cpu_s_per_M"],
           "large": ["mbytes_per_sec", "proxy_cpu_s_per_M"],
           "latency": ["p50_us", "p99_us", "p999_us"],
           "rates": ["p50_us", "p99_us", "p999_us", "cpu_us_per_msg"],
           "connect": ["connects_per_sec", "p99_us", "proxy_cpu_us_per_connect"],
           "idle": ["bytes_per_conn"]}


def summarise_ab(raw):
    """Medians of mqgate and mqgate-b side by side, per scenario and figure."""
    rows = []
    seen = []
    for r in raw:
        sv = (r["scenario"], r["variant"])
        if sv not in seen:
            seen.append(sv)
    for scn, var in seen:
        for key in AB_KEYS.get(scn, []):
            vals = [med([r["result"].get(key) for r in raw if r["scenario"] == scn
                         and r["variant"] == var and r["target"] == t])
                    for t in ["mqgate", "mqgate-b"]]
            if None in vals:
                continue
            rows.append((f"{scn} {var} {key}", vals[0], vals[1],
                         vals[1] / vals[0] if vals[0] else None))
    return rows


def print_ab(rows, a):
    print()
    print(f"A/B: mqgate vs mqgate-b ({a.ab_bin or 'same binary'}; {a.ab_section} + {a.ab!r}), medians")
    for name, x, y, q in rows:
        print(f"  {name:44s} {fmt(x):>11s} {fmt(y):>11s}   b/a {fmt(q)}")


def fmt(x):
    if x is None:
        return "-"
    if isinstance(x, float) and abs(x) < 10:
        return f"{x:.3f}"
    return f"{x:,.0f}"


def ran(rows, checks, only):
    """Rows and target lines of the scenarios that ran: a row with no figure in any
    column is left out, and so is a target line of a scenario not selected."""
    rows = [r for r in rows if any(x not in (None, 0) for x in r[1:4])]
    owner = [("throughput ", "throughput"), ("added latency", "latency"),
             ("connect ", "connect"), ("idle memory", "idle"), ("CPU per M msgs", "throughput"),
             ("fanin ", "fanin"), ("fanout ", "fanout"), ("large ", "large"),
             ("fan-in ", "rates"), ("websocket ", "ws")]
    def wanted(name):
        for prefix, scn in owner:
            if name.startswith(prefix):
                return scn in only
        return True
    return rows, [c for c in checks if wanted(c[0])]


def print_table(rows, checks):
    head = ("figure (median of rounds)", "direct", "haproxy", "mqgate", "hap/direct", "mqg/direct|hap")
    w = [34, 11, 11, 11, 11, 15]
    line = lambda cells: "  ".join(str(c).ljust(w[0]) if i == 0 else str(c).rjust(w[i])
                                   for i, c in enumerate(cells))
    print(line(head))
    print("-" * (sum(w) + 10))
    for r in rows:
        print(line([r[0]] + [fmt(x) for x in r[1:]]))
    print()
    print("targets (same run):")
    for name, val, op, want in checks:
        met = None if val is None else (val >= want if op == ">=" else val <= want)
        state = "n/a" if met is None else ("met" if met else "NOT met")
        print(f"  {name:52s} {fmt(val):>8s}  {state}")
    print()
    print("(direct column of the CPU rows: Mosquitto's own CPU per M msgs or per session,"
          " for scale; mqg/direct|hap: mqgate/direct for throughput and connects,"
          " mqgate/haproxy for added latency and CPU per session)")


def machine():
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    def ver(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True).stdout.strip().splitlines()[0]
        except Exception:
            return "?"
    return {"nproc": os.cpu_count(), "cpu": model, "kernel": platform.release(),
            "haproxy": ver(["haproxy", "-v"]), "mosquitto": ver(["mosquitto", "-h"]),
            "load_before": os.getloadavg()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--only", help="comma list of " + ",".join(SCENARIOS) + " (ws: the"
                    " WebSocket target beside the others in throughput, latency and idle;"
                    " default: all)")
    ap.add_argument("--after-load", dest="after_load", action="store_true", default=None,
                    help="latency (pairs) too right after a full-speed fan-in run through"
                    " the same target (always so for `rates`, unless --no-after-load)")
    ap.add_argument("--no-after-load", dest="after_load", action="store_false")
    ap.add_argument("--mqgate", required=True)
    ap.add_argument("--loadgen", required=True)
    ap.add_argument("--ab", metavar="TOML", help="A/B run: a fourth target, mqgate-b, whose config"
                    " has these [limits] lines added (';' separates lines), e.g. 'threads = 0'")
    ap.add_argument("--ab-section", metavar="TABLE", default="[limits]",
                    help="the table the --ab lines go to, e.g. '[log]' (default [limits])")
    ap.add_argument("--ab-bin", metavar="PATH", help="the mqgate-b binary (default: --mqgate)")
    ap.add_argument("--broker-tls", action="store_true", help="add the `tlsup` scenario: mqgate"
                    " throughput with TLS on both sides (client and broker) vs plain")
    ap.add_argument("--haproxy-global", metavar="CFG", help="lines added to HAProxy's global"
                    " section (';' separates lines), e.g. 'nbthread 1'")
    ap.add_argument("--ab-sessions", action="store_true", help="A/B run of the packet-aware"
                    " relay: throughput clients keep a session (clean session 0) on every target,"
                    " and mqgate-b has [clusters.brokers.sessions] restore_subscriptions = true")
    ap.add_argument("--ab-tuned", action="store_true", help="A/B: mqgate-b runs the tuned"
                    " config (mqgate-tuned.toml.tmpl: log level warn, check = \"tcp\", every"
                    " client id sticky) beside mqgate as shipped")
    a = ap.parse_args()
    if (a.ab_bin or a.ab_sessions or a.ab_tuned) and a.ab is None:
        a.ab = ""
    targets = TARGETS + (["mqgate-b"] if a.ab is not None else [])
    proxies = PROXIES + (["mqgate-b"] if a.ab is not None else [])
    p = plan(a.quick)
    if a.rounds:
        p["rounds"] = a.rounds
    only = set(a.only.split(",")) if a.only and a.only != "all" else set(SCENARIOS)
    unknown = only - set(SCENARIOS) - {"tlsup"}
    if unknown:
        ap.error(f"--only: unknown scenario(s) {', '.join(sorted(unknown))}; known: {','.join(SCENARIOS)}")
    if a.broker_tls:
        only.add("tlsup")
    ws = [WS] if "ws" in only else []
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    outdir = os.path.join(ROOT, "integration", "out")
    work = os.path.join(outdir, f"bench-{stamp}.d")
    os.makedirs(work, exist_ok=True)
    info = machine()
    info["nofile"] = subprocess.run(["sh", "-c", "ulimit -n"], capture_output=True, text=True).stdout.strip()
    log(f"== bench ({'quick' if a.quick else 'full'}), work dir {work}")
    env = Env(a, work)
    raw = []
    try:
        for t in targets:
            env.start(t)
        for rnd in range(p["rounds"]):
            k = rnd % len(targets)
            order = targets[k:] + targets[:k]
            if ws:
                # The WebSocket target right before or after mqgate, alternating.
                i = order.index("mqgate") + rnd % 2
                order = order[:i] + ws + order[i:]
            log(f"== round {rnd + 1}/{p['rounds']}, order {order}")
            jobs = []
            if "throughput" in only:
                for qos, size in p["tp"]:
                    jobs.append(("throughput", f"qos{qos}-{size}B",
                                 lambda t, q=qos, s=size: scenario_throughput(env, p, t, q, s),
                                 targets + ws))
            for scn in ("fanin", "fanout"):
                if scn in only:
                    for qos, size in p[scn]:
                        jobs.append((scn, f"qos{qos}-{size}B",
                                     lambda t, q=qos, s=size, sh=scn: scenario_throughput(env, p, t, q, s, sh),
                                     targets))
            if "large" in only:
                for name, size in p["large"]:
                    jobs.append(("large", name,
                                 lambda t, s=size: scenario_throughput(env, p, t, 0, s, "fanin"),
                                 targets))
            if "latency" in only:
                jobs.append(("latency", "qos0-100B",
                             lambda t: scenario_latency(env, p, t, bool(a.after_load)),
                             targets + ws))
            if "rates" in only:
                for name, rate, idle in p["rates"]:
                    jobs.append(("rates", name,
                                 lambda t, r=rate, i=idle: scenario_rate(
                                     env, p, t, r, i, a.after_load is not False),
                                 targets))
            if "connect" in only:
                jobs.append(("connect", "plain", lambda t: scenario_connect(env, p, t, False), targets))
                jobs.append(("connect", "tls", lambda t: scenario_connect(env, p, t, True), targets))
            if "tlsup" in only and a.broker_tls:
                for var in TLSUP_VARIANTS:
                    jobs.append(("tlsup", var, lambda t, v=var: scenario_tlsup(env, p, v), ["mqgate"]))
            if "idle" in only:
                for n in p["idle"]:
                    jobs.append(("idle", f"{n}", lambda t, n=n: scenario_idle(env, t, n),
                                 proxies + ws))
            for scn, var, fn, job_targets in jobs:
                for t in [x for x in order if x in job_targets]:
                    r = fn(t)
                    raw.append({"round": rnd, "scenario": scn, "variant": var, "target": t, "result": r})
                    log(f"   {scn:10s} {var:11s} {t:8s} {json.dumps(r)}")
    finally:
        env.stop_all()
    rows, checks = summarise(raw, p)
    ws_rows, ws_checks = summarise_ws(raw, p) if ws else ([], [])
    checks += ws_checks
    rows, checks = ran(rows, checks, only)
    print_table(rows, checks)
    if ws_rows:
        print_ws(ws_rows)
    paired = [x for x in summarise_paired(raw, p) if x[1] is not None]
    print_paired(paired)
    ab = summarise_ab(raw) if a.ab is not None else []
    if ab:
        print_ab(ab, a)
    if a.broker_tls:
        print_tlsup(raw)
    info["load_after"] = os.getloadavg()
    out = os.path.join(outdir, f"bench-{stamp}.json")
    with open(out, "w") as f:
        json.dump({"machine": info, "mode": "quick" if a.quick else "full", "plan": p,
                   "command": " ".join(sys.argv), "raw": raw,
                   "table": [list(r) for r in rows],
                   "ab": [list(r) for r in ab],
                   "websocket": [list(r) for r in ws_rows],
                   "paired": [{"name": n, "value": v} for n, v in paired],
                   "targets": [{"name": n, "value": v, "op": o, "want": w} for n, v, o, w in checks]},
                  f, indent=1)
    print(f"\nraw figures and summary: {out}")


if __name__ == "__main__":
    try:
        main()
    except HarnessError as e:
        log(f"bench: {e}")
        sys.exit(1)
