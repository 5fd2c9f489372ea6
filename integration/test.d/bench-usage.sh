#!/usr/bin/env bash
# `integration/bench --help` (and -h) prints its usage and exits 0; an unknown option
# (or an unknown scenario in --only) prints the usage to stderr and exits 2; neither
# builds nor benchmarks anything (no "== building" line, and it returns within seconds).
set -euo pipefail
cd "$(dirname "$0")/../.."
fail() { echo "bench-usage: $*" >&2; exit 1; }
for h in --help -h; do
  out=$(timeout 20 integration/bench "$h" 2>/tmp/bench-usage.$$) || fail "$h exited $?"
  grep -q '^usage: integration/bench' <<<"$out" || fail "$h printed no usage on stdout"
  grep -q -- '--only' <<<"$out" || fail "$h usage does not list --only"
  ! grep -q '== building' /tmp/bench-usage.$$ || fail "$h started a build"
done
for bad in --no-such-option stray --rounds "--only fanin,nosuchshape"; do
  set +e
  # shellcheck disable=SC2086 # "--only X" is two words
  out=$(timeout 20 integration/bench $bad 2>/tmp/bench-usage.$$)
  rc=$?
  set -e
  [ "$rc" = 2 ] || fail "$bad exited $rc, expected 2"
  [ -z "$out" ] || fail "$bad printed on stdout: $out"
  grep -q '^usage: integration/bench' /tmp/bench-usage.$$ || fail "$bad printed no usage on stderr"
  ! grep -q '== building' /tmp/bench-usage.$$ || fail "$bad started a build"
done
rm -f /tmp/bench-usage.$$
echo "bench-usage: --help, -h and bad options answered without building"
