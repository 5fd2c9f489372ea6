#!/usr/bin/env bash
# Smoke test of integration/demo (the README's first command):
#   1. `--duration 20` runs to the end by itself, shows the full-sync failover (the
#      clients move to the new leader) and leaves no process or directory behind;
#   2. an interactive run stopped with SIGTERM (`kill`), at three moments, cleans up too;
#   3. so does one stopped with Ctrl-C at a (pseudo-)terminal.
# Uses the debug binary (built by `cargo test`, or built here) to avoid a release build.
set -euo pipefail
cd "$(dirname "$0")/../.."

BIN="${MQGATE_BIN:-$PWD/target/debug/mqgate}"
DEMO="${DEMO:-$PWD/integration/demo}"   # override to test a modified demo
if [ ! -x "$BIN" ]; then
  cargo build --bin mqgate
fi
command -v setsid >/dev/null || { echo "demo-smoke: setsid (util-linux) is needed"; exit 1; }

fail() { echo "demo-smoke: FAIL: $*" >&2; exit 1; }
out="$(mktemp)"
trap 'rm -f "$out"' EXIT

# Every process the demo starts stays in its session (nothing it runs calls setsid).
leftovers() { # session id
  pgrep -s "$1" 2>/dev/null || true
}
check_clean() { # session id, log
  local dir
  dir="$(sed -n 's/.*demo directory: \(\S*\).*/\1/p' "$2" | head -n1)"
  [ -n "$dir" ] || fail "the demo did not print its directory"
  # The demo may take a moment to reap after its own exit: poll briefly.
  for _ in $(seq 50); do
    [ -z "$(leftovers "$1")" ] && break
    sleep 0.1
  done
  local left; left="$(leftovers "$1")"
  if [ -n "$left" ]; then
    ps -o pid,args -p "$(echo $left | tr ' ' ',')" >&2 || true
    kill -KILL $left 2>/dev/null || true
    fail "processes left behind by the demo"
  fi
  if pgrep -f "$dir" >/dev/null; then
    fail "a process still uses $dir"
  fi
  [ ! -e "$dir" ] || fail "$dir was not removed"
}

# setsid runs the demo in place (this shell has no job control), so the demo's pid
# is its session id.
same_session() {
  local sid; sid="$(ps -o sid= -p "$1" | tr -d ' ')"
  [ "$sid" = "$1" ] || fail "demo pid $1 is not its session leader (session $sid)"
}

# Wait for the demo to end by itself; past the deadline, kill its session and fail.
wait_demo() { # pid, seconds
  local end=$((SECONDS + $2))
  while kill -0 "$1" 2>/dev/null; do
    if [ $SECONDS -ge $end ]; then
      cat "$out"
      # shellcheck disable=SC2046 # one pid per word
      kill -KILL $(leftovers "$1") 2>/dev/null || true
      fail "demo did not finish within $2 s"
    fi
    sleep 0.2
  done
  wait "$1"
}

echo "-- demo --duration 20"
setsid "$DEMO" --bin "$BIN" --no-install --duration 20 --every 12 >"$out" 2>&1 &
pid=$!
same_session "$pid"
wait_demo "$pid" 90 || { cat "$out"; fail "demo exited with an error"; }
cat "$out"
grep -q "mqgate is running" "$out" || fail "no start banner"
grep -q "status page: *http://127.0.0.1:[0-9]*/status" "$out" || fail "status page address not printed"
grep -q "metrics (Prometheus): *http://127.0.0.1:[0-9]*/metrics" "$out" || fail "metrics address not printed"
grep -q "FAILOVER (full-sync)" "$out" || fail "no failover shown"
grep -q "leader of fullsync is now fs2" "$out" || fail "mqgate did not follow the new leader"
grep -q "clients moved from fs1 to fs2" "$out" || fail "clients did not move to the new leader"
grep -q "stopped all [0-9]* processes" "$out" || fail "no cleanup report"
check_clean "$pid" "$out"

# SIGTERM at a few moments after the traffic starts (the demo is then polling the
# metrics and parsing command substitutions; bash 5.2 once lost a trap there).
for delay in 0 0.4 1.1; do
  echo "-- demo stopped by SIGTERM ${delay} s after the traffic started"
  setsid "$DEMO" --bin "$BIN" --no-install >"$out" 2>&1 &
  pid=$!
  same_session "$pid"
  for _ in $(seq 300); do
    grep -q "traffic started" "$out" && break
    kill -0 "$pid" 2>/dev/null || { cat "$out"; fail "demo exited early"; }
    sleep 0.1
  done
  grep -q "traffic started" "$out" || { cat "$out"; fail "demo did not start traffic"; }
  sleep "$delay" # a chosen moment to signal at, not a wait for something
  kill -TERM "$pid"
  wait_demo "$pid" 20 || true
  grep -q "stopped all [0-9]* processes" "$out" || { cat "$out"; fail "no cleanup after SIGTERM"; }
  check_clean "$pid" "$out"
done
echo "-- demo stopped by Ctrl-C at a terminal"
if command -v python3 >/dev/null; then
  # A pseudo-terminal, so that Ctrl-C reaches the demo and everything it started
  # (the terminal's foreground process group), as for a user at a terminal.
  DEMO="$DEMO" BIN="$BIN" python3 - >"$out" 2>&1 <<'PY' || { cat "$out"; fail "Ctrl-C run failed"; }
import os, pty, select, signal, sys, time
pid, fd = pty.fork()
if pid == 0:
    # As an interactive shell starts a job: SIGINT and SIGQUIT at their defaults, even
    # when this test was started in the background (which ignores them).
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)
    os.execv(os.environ["DEMO"], [os.environ["DEMO"], "--bin", os.environ["BIN"], "--no-install"])
buf = b""
def pump(secs, until=None):
    global buf
    end = time.time() + secs
    while time.time() < end and not (until and until in buf):
        if select.select([fd], [], [], 0.2)[0]:
            try:
                buf += os.read(fd, 65536)
            except OSError:
                return
pump(60, b"traffic started")
if b"traffic started" not in buf:
    os.kill(pid, 9)
    sys.exit("demo did not start traffic:\n" + buf.decode(errors="replace"))
os.write(fd, b"\x03")
pump(20, b"removed")
if b"removed" not in buf:
    os.killpg(pid, signal.SIGKILL)
    sys.exit("demo did not stop within 20 s of Ctrl-C:\n" + buf.decode(errors="replace"))
pump(1)
os.waitpid(pid, 0)
sys.stdout.write(buf.decode(errors="replace"))
print("\nsession", pid)
PY
  grep -q "stopped all [0-9]* processes" "$out" || { cat "$out"; fail "no cleanup after Ctrl-C"; }
  check_clean "$(sed -n 's/^session //p' "$out")" "$out"
else
  echo "demo-smoke: skipped the Ctrl-C check (python3 not installed)"
fi
echo "demo-smoke: OK"
