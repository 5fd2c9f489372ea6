#!/usr/bin/env bash
# Smoke of the benchmark harness: one short round of every scenario, so that the harness
# keeps working. It asserts that traffic flows, never on speed.
set -euo pipefail
cd "$(dirname "$0")/../.."
exec integration/bench --quick
