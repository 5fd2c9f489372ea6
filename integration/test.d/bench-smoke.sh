#!/usr/bin/env bash
# Smoke of the benchmark harness: one short round of every scenario, so that the harness
# keeps working. It asserts that traffic flows, never on speed. The A/B target
# (`--ab`, here mqgate without connection threads) runs too, and its table must appear.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=$(integration/bench --quick --ab "threads = 0")
printf '%s\n' "$out"
grep -q '^A/B: mqgate vs mqgate-b' <<<"$out" || { echo "bench-smoke: no A/B table" >&2; exit 1; }
grep -q 'throughput qos0-100B msgs_per_sec' <<<"$out" || { echo "bench-smoke: A/B table has no throughput row" >&2; exit 1; }
