#!/usr/bin/env bash
# Smoke of the benchmark harness: one short round of every scenario, so that the harness
# keeps working. It asserts that traffic flows, never on speed. The A/B target
# (`--ab`, here mqgate without connection threads) runs too, and its table must appear;
# HAProxy runs with a line added to its global section (`--haproxy-global`), which must
# be in the config it ran with (HAProxy checks that config before the run starts).
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
