#!/usr/bin/env bash
# The Dockerfile, docker-compose example and systemd unit cannot be run here (no
# container engine, systemd is not PID 1), so this script runs what they would run:
#   1. the Dockerfile build stage's RUN line (the same cargo build and file copies,
#      into a staging root instead of /out), which also runs `mqgate version` and
#      `mqgate check` on the config the image ships;
#   2. checks that ENTRYPOINT, CMD and HEALTHCHECK name files present in the staging
#      root, and that the staged binary starts on the shipped config and stops on SIGTERM;
#   3. the compose example: its mqgate configs pass `mqgate check`, its Prometheus
#      config passes promtool, its Mosquitto config starts a broker, the files it
#      mounts exist;
#   4. `systemd-analyze verify` on packaging/mqgate.service (skipped without systemd).
# DOCKER_STEPS_PROFILE=dev builds the debug profile instead of --release (quicker
# local runs; CI runs the exact command).
set -euo pipefail
cd "$(dirname "$0")/../.."

fail() { echo "dockerfile-steps: FAIL: $*" >&2; exit 1; }
skip() { echo "dockerfile-steps: skipped: $*"; }
STAGE="$(mktemp -d "${TMPDIR:-/tmp}/mqgate-docker-stage.XXXXXX")"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  rm -rf "$STAGE"
}
trap cleanup EXIT

free_port() { # prints a port nothing listens on
  local p
  while :; do
    p=$((20000 + RANDOM % 12000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
  done
}
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# ---------------------------------------------------------------- 1. build stage
# The RUN line that starts with `cargo build`, with its continuation lines.
steps="$(awk '
  /^RUN cargo build/ { on = 1; sub(/^RUN /, "") }
  on { line = $0; more = sub(/\\[[:space:]]*$/, "", line); printf "%s ", line; if (!more) exit }
' Dockerfile)"
[ -n "$steps" ] || fail "no 'RUN cargo build' line in the Dockerfile"
grep -q 'WORKDIR /src' Dockerfile || fail "the build stage is expected to work in /src (the repository)"
steps="${steps//\/out/$STAGE}"
if [ "${DOCKER_STEPS_PROFILE:-release}" = dev ]; then
  steps="${steps//--release/}"
  steps="${steps//target\/release/target/debug}"
fi
echo "dockerfile-steps: running the build stage: $steps"
bash -euo pipefail -c "$steps" || fail "the Dockerfile build steps failed"

# ---------------------------------------------------------------- 2. runtime stage
BIN="$STAGE/usr/local/bin/mqgate"
CONF="$STAGE/etc/mqgate/mqgate.toml"
[ -x "$BIN" ] || fail "binary not staged at /usr/local/bin/mqgate"
[ -f "$CONF" ] || fail "config not staged at /etc/mqgate/mqgate.toml"
[ -d "$STAGE/var/lib/mqgate" ] || fail "/var/lib/mqgate (VOLUME) not staged"
# Every absolute path in ENTRYPOINT / CMD / HEALTHCHECK exists in the image.
for path in $(grep -E '^(ENTRYPOINT|CMD|  CMD)|HEALTHCHECK' -A1 Dockerfile | grep -o '"/[^"]*"' | tr -d '"' | sort -u); do
  [ -e "$STAGE$path" ] || fail "the Dockerfile names $path, which the image would not contain"
done
grep -q '^USER 65532' Dockerfile || fail "the runtime image must not run as root"
grep -q 'COPY --from=build --chown=65532:65532 /out/ /' Dockerfile \
  || fail "the runtime stage must copy the whole staging root (as the non-root user)"

# The staged binary runs the shipped config (ports moved to free ones) and stops on SIGTERM.
mqtt_port="$(free_port)"; admin_port="$(free_port)"
sed -e "s/0\.0\.0\.0:1883/127.0.0.1:$mqtt_port/; s/0\.0\.0\.0:9100/127.0.0.1:$admin_port/" "$CONF" >"$STAGE/run.toml"
"$BIN" run -c "$STAGE/run.toml" 2>"$STAGE/run.log" &
gate=$!; PIDS+=("$gate")
for _ in $(seq 100); do port_open "$admin_port" && break; sleep 0.1; done
port_open "$admin_port" || { cat "$STAGE/run.log"; fail "the image's default config did not start"; }
port_open "$mqtt_port" || fail "the image's MQTT listener is not open"
kill -TERM "$gate"
rc=0; wait "$gate" || rc=$?
[ "$rc" = 0 ] || { cat "$STAGE/run.log"; fail "mqgate exited $rc on SIGTERM"; }

# ---------------------------------------------------------------- 3. compose example
export MQGATE_PEERS_SECRET=compose-check-secret MQGATE_ADMIN_TOKEN=compose-check-token
for f in docker/mqgate*.toml; do
  "$BIN" check -c "$f" >/dev/null || fail "$f does not pass mqgate check"
done
if command -v promtool >/dev/null; then
  promtool check config docker/prometheus.yml >/dev/null || fail "docker/prometheus.yml is invalid"
else
  skip "promtool not installed: docker/prometheus.yml not checked"
fi
if command -v python3 >/dev/null && python3 -c 'import yaml' 2>/dev/null; then
  python3 - <<'EOF' || fail "docker-compose.yml is inconsistent"
import os, sys, yaml
d = yaml.safe_load(open("docker-compose.yml"))
services = d["services"]
want = {"mosquitto-1", "mosquitto-2", "mosquitto-3", "mqgate-a", "mqgate-b", "prometheus"}
missing = want - set(services)
if missing:
    sys.exit(f"services missing: {missing}")
for name, s in services.items():
    for v in s.get("volumes", []):
        src = v.split(":")[0]
        if src.startswith("./") and not os.path.exists(src):
            sys.exit(f"{name} mounts {src}, which does not exist")
    for dep in s.get("depends_on", []):
        if dep not in services:
            sys.exit(f"{name} depends on unknown service {dep}")
for g in ("mqgate-a", "mqgate-b"):
    if services[g].get("build") != ".":
        sys.exit(f"{g} must build the Dockerfile")
print("docker-compose.yml: services, mounts and dependencies consistent")
EOF
else
  skip "python3 with PyYAML not available: docker-compose.yml not checked"
fi
if command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ]; then
  port="$(free_port)"
  sed "s/^listener 1883$/listener $port 127.0.0.1/" docker/mosquitto.conf >"$STAGE/mosquitto.conf"
  grep -q "^listener $port" "$STAGE/mosquitto.conf" || fail "docker/mosquitto.conf has no 'listener 1883' line"
  "$(command -v mosquitto || echo /usr/sbin/mosquitto)" -c "$STAGE/mosquitto.conf" >"$STAGE/mosquitto.log" 2>&1 &
  PIDS+=("$!")
  for _ in $(seq 100); do port_open "$port" && break; sleep 0.1; done
  port_open "$port" || { cat "$STAGE/mosquitto.log"; fail "docker/mosquitto.conf does not start mosquitto"; }
  kill -TERM "${PIDS[-1]}" 2>/dev/null || true
  wait "${PIDS[-1]}" 2>/dev/null || true
else
  skip "mosquitto not installed: docker/mosquitto.conf not started"
fi

# ---------------------------------------------------------------- 4. systemd unit
if command -v systemd-analyze >/dev/null; then
  # verify wants the ExecStart binaries to exist: point them at the staged one.
  sed "s|/usr/local/bin/mqgate|$BIN|g" packaging/mqgate.service >"$STAGE/mqgate.service"
  out="$(systemd-analyze verify "$STAGE/mqgate.service" 2>&1)" || { echo "$out"; fail "systemd-analyze verify failed"; }
  [ -z "$out" ] || { echo "$out"; fail "systemd-analyze verify reported problems"; }
  grep -q '^ExecReload=/bin/kill -HUP \$MAINPID$' packaging/mqgate.service || fail "ExecReload must send SIGHUP"
  grep -q '^StateDirectory=mqgate$' packaging/mqgate.service || fail "StateDirectory (sticky snapshot) missing"
  echo "dockerfile-steps: systemd-analyze verify: OK"
else
  skip "systemd-analyze not installed: packaging/mqgate.service not verified"
fi
echo "dockerfile-steps: OK"
