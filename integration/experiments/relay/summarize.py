#!/usr/bin/env python3
"""Per target, the figures of each round of a drive.py run (its JSON lines, in a file):
latency p50/p99/p999 or messages/s, the relay's CPU seconds over each run, for
throughput also its CPU µs per message (over the whole run, warm-up included, / messages
delivered in it), and the whole machine's CPU seconds.

    summarize.py FILE.jsonl"""
import collections
import json
import sys

by = collections.defaultdict(list)
for line in open(sys.argv[1]):
    r = json.loads(line)
    by[r["target"]].append(r)
for t, rs in by.items():
    latency = "p50_us" in rs[0]
    large = not latency and rs[0].get("size", 0) >= 65536
    keys = ["p50_us", "p99_us", "p999_us"] if latency else (
        ["mbytes_per_sec"] if large else ["msgs_per_sec"])
    figs = "  ".join(f"{k} {[round(r[k]) for r in rs]}" for k in keys)
    per_msg = "" if latency else (
        f"  relay CPU µs per message {[round(r['proc_cpu_s'] * 1e6 / r['delivered_total'], 1) for r in rs]}")
    if large:  # CPU ms per MB delivered (whole run, warm-up included)
        per_msg += (f"  relay CPU ms per MB "
                    f"{[round(r['proc_cpu_s'] * 1e3 / (r['delivered_total'] * r['size'] / 1e6), 3) for r in rs]}")
    print(f"  {t:8} {figs}  proxy cpu s {[r['proc_cpu_s'] for r in rs]}{per_msg}"
          f"  machine cpu s {[r['machine_cpu_s'] for r in rs]}")
