#!/usr/bin/env bash
# Smoke of the benchmark harness: one short round of every scenario, so that the harness
# keeps working. It asserts that traffic flows, never on speed. The A/B target
# (`--ab`, here mqgate without connection threads) runs too, and its table must appear;
# HAProxy runs with a line added to its global section (`--haproxy-global`), which must
# be in the config it ran with (HAProxy checks that config before the run starts). The
# paired-by-round ratios must be printed and, in this one-round run, equal the target lines.
# The load shapes (fan-in, fan-out, fan-in latency after load with idle sessions) must
# have run on every target.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=$(integration/bench --quick --ab "threads = 0" --haproxy-global "nbthread 1")
printf '%s\n' "$out"
json=$(sed -n 's/^raw figures and summary: //p' <<<"$out")
[ -n "$json" ] || { echo "bench-smoke: no summary file named" >&2; exit 1; }
grep -qx '    nbthread 1' "${json%.json}.d/haproxy.cfg" ||
  { echo "bench-smoke: --haproxy-global line not in ${json%.json}.d/haproxy.cfg" >&2; exit 1; }
grep -q '^A/B: mqgate vs mqgate-b' <<<"$out" || { echo "bench-smoke: no A/B table" >&2; exit 1; }
grep -q 'throughput qos0-100B msgs_per_sec' <<<"$out" || { echo "bench-smoke: A/B table has no throughput row" >&2; exit 1; }
grep -q '^paired by round' <<<"$out" || { echo "bench-smoke: no paired-by-round block" >&2; exit 1; }
# One round: each paired ratio is that round's ratio, so it must equal the target line's
# ratio of medians.
python3 - "$json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
rounds = {r["round"] for r in d["raw"]}
assert len(rounds) == 1, f"the smoke should run one round, ran {sorted(rounds)}"
targets = {t["name"]: t["value"] for t in d["targets"]}
# pairs throughput cases, fan-in and fan-out cases, plain and TLS connects
want = len(d["plan"]["tp"]) + len(d["plan"]["fanin"]) + len(d["plan"]["fanout"]) + 2
assert len(d["paired"]) == want, (want, d["paired"])
# The shapes of issue 31 ran on every target: fan-in, fan-out, the fan-in latency at a
# fixed rate right after a full-speed run, with idle sessions beside it.
for scn in ("fanin", "fanout", "rates"):
    got = {r["target"] for r in d["raw"] if r["scenario"] == scn}
    assert {"direct", "haproxy", "mqgate", "mqgate-b"} <= got, (scn, got)
for r in d["raw"]:
    if r["scenario"] == "rates":
        assert r["result"]["after_load"] and r["result"]["idle"] > 0 and r["result"]["samples"] > 0, r
    if r["scenario"] in ("fanin", "fanout"):
        assert r["result"]["shape"] == r["scenario"] and r["result"]["delivered"] > 0, r
for p in d["paired"]:
    line = [v for n, v in targets.items() if n.startswith(p["name"] + " ")]
    assert len(line) == 1, f"no target line for {p['name']}"
    assert p["value"] is not None and abs(p["value"] - line[0]) < 1e-9, (p, line)
print(f"bench-smoke: {len(d['paired'])} paired ratios agree with the one round's target lines")
PY
