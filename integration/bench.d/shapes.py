"""Summary of the load shapes of issue 31 (imported by bench.py): fan-in, fan-out and
large-message throughput, and fan-in latency at fixed rates, direct / HAProxy / mqgate
side by side. Rows have bench.py's table form: (figure, direct, haproxy, mqgate,
haproxy/direct, mqgate/direct or mqgate/haproxy); target lines (name, value, op, want)."""
import statistics


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def ratio(a, b):
    return a / b if a is not None and b not in (None, 0) else None


def pick(raw, scn, var, target, key):
    return med([r["result"].get(key) for r in raw
                if r["scenario"] == scn and r["variant"] == var and r["target"] == target])


def paired_added(raw, scn, var, key, target):
    """Median over rounds of (target's latency figure - direct's) in the same round."""
    by_round = {}
    for r in raw:
        if r["scenario"] == scn and r["variant"] == var and r["target"] in ("direct", target):
            by_round.setdefault(r["round"], {})[r["target"]] = r["result"].get(key)
    return med([v[target] - v["direct"] for v in by_round.values()
                if v.get(target) is not None and v.get("direct") is not None])


def tp_variants(p):
    """(scenario, variant, figure key, unit) of every throughput shape in the plan."""
    out = []
    for scn in ("fanin", "fanout"):
        for qos, size in p.get(scn, []):
            out.append((scn, f"qos{qos}-{size}B", "msgs_per_sec", "msg/s"))
    for name, _size in p.get("large", []):
        out.append(("large", name, "mbytes_per_sec", "MB/s"))
    return out


def summarise_shapes(raw, p):
    targets = ("direct", "haproxy", "mqgate")
    rows, checks = [], []
    for scn, var, key, unit in tp_variants(p):
        d, h, m = (pick(raw, scn, var, t, key) for t in targets)
        if None in (d, h, m):
            continue
        rows.append((f"{scn} {var} {unit}", d, h, m, ratio(h, d), ratio(m, d)))
        checks.append((f"{scn} {var}: mqgate/direct >= 0.98", ratio(m, d), ">=", 0.98))
        h, m = (pick(raw, scn, var, t, "proxy_cpu_s_per_M") for t in ("haproxy", "mqgate"))
        dc = pick(raw, scn, var, "direct", "broker_cpu_s_per_M")
        rows.append((f"  CPU s per M msgs", dc, h, m, None, ratio(m, h)))
    for name, rate, idle in p.get("rates", []):
        if pick(raw, "rates", name, "mqgate", "p50_us") is None:
            continue
        for key in ("p50_us", "p99_us", "p999_us"):
            d, h, m = (pick(raw, "rates", name, t, key) for t in targets)
            ha, ma = (paired_added(raw, "rates", name, key, t) for t in ("haproxy", "mqgate"))
            rows.append((f"fan-in {name}/s {key[:-3]} µs", d, h, m, None, None))
            rows.append((f"  added {key[:-3]}, paired by round", 0, ha, ma, None,
                         ratio(ma, ha) if ha and ha > 0 else None))
            if key != "p999_us":
                q = ratio(ma, ha) if ha and ha > 0 else None
                checks.append((f"fan-in {name}/s added {key[:-3]}: mqgate/haproxy <= 1", q, "<=", 1.0))
        d, h, m = (pick(raw, "rates", name, t, "cpu_us_per_msg") for t in targets)
        rows.append((f"  CPU µs per msg", d, h, m, None, ratio(m, h)))
    return rows, checks
