#!/usr/bin/env bash
# Runs the Python client example (examples/python) against a real server:
# installs its requirements, generates the stubs, starts Broadside on a free
# loopback port with a throwaway SQLite database, waits until it reports
# SERVING, runs watch_campaign.py with 500 recipients and stops the server.
#
# Run from anywhere (it moves to the repository root):
#   bash .ci/python-example.sh
#
# Needs a built server (CI runs this after `cargo test`). Overrides:
#   BROADSIDE_BIN=path/to/broadside   server binary (default target/debug/broadside)
#   PYTHON=python3                    interpreter for pip, protoc and the example
#   EXAMPLE_TIMEOUT=120               seconds the example may take
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

BIN=${BROADSIDE_BIN:-target/debug/broadside}
PYTHON=${PYTHON:-python3}
EXAMPLE_TIMEOUT=${EXAMPLE_TIMEOUT:-120}
RECIPIENTS=500
EXAMPLE=examples/python

log() { printf 'python-example: %s\n' "$*"; }
die() { printf 'python-example: FATAL: %s\n' "$*" >&2; exit 2; }

[[ -x $BIN ]] || die "no server binary at $BIN (build it, or set BROADSIDE_BIN)"

WORK=$(mktemp -d)
SERVER_PID=
SERVER_LOG=$WORK/server.log

stop_server() {
  [[ -n $SERVER_PID ]] || return 0
  local pid=$SERVER_PID code=0
  SERVER_PID=
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    # Graceful shutdown drains in-flight sends; give it a while, then insist.
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "server $pid ignored SIGTERM for 10s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  else
    log "server $pid had already exited"
  fi
  wait "$pid" 2>/dev/null || code=$?
  log "server stopped (exit status $code)"
}

on_exit() {
  local status=$?
  stop_server
  if ((status != 0)) && [[ -s $SERVER_LOG ]]; then
    printf '\n---- server log (%s) ----\n' "$BIN" >&2
    cat "$SERVER_LOG" >&2
    printf -- '---- end of server log ----\n' >&2
  fi
  rm -rf "$WORK"
  exit "$status"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log "installing $EXAMPLE/requirements.txt"
PIP_ROOT_USER_ACTION=ignore "$PYTHON" -m pip install --quiet --disable-pip-version-check \
  -r "$EXAMPLE/requirements.txt" 2>&1 | { grep -v "Running pip as the 'root' user" || true; }

log "generating stubs"
PYTHON=$PYTHON bash "$EXAMPLE/generate.sh"

# Ask the kernel for a free loopback port. Another process could take it
# before the server binds; that shows up as a server that exits at once.
PORT=$("$PYTHON" -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()')
ADDRESS=127.0.0.1:$PORT

log "starting $BIN on $ADDRESS (database $WORK/broadside.db)"
BROADSIDE_DATABASE_URL="sqlite://$WORK/broadside.db?mode=rwc" \
  BROADSIDE_LISTEN=$ADDRESS \
  BROADSIDE_METRICS_LISTEN=off \
  BROADSIDE_RATE_LIMIT=200 \
  NO_COLOR=1 \
  "$BIN" serve >"$SERVER_LOG" 2>&1 &
SERVER_PID=$!

log "waiting for health SERVING"
"$PYTHON" - "$ADDRESS" "$SERVER_PID" <<'PY'
import os
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

address, pid = sys.argv[1], int(sys.argv[2])
service = "broadside.v1.CampaignService"
give_up = time.monotonic() + 60
last = "no answer yet"
with grpc.insecure_channel(address) as channel:
    health = health_pb2_grpc.HealthStub(channel)
    while time.monotonic() < give_up:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            sys.exit(f"the server (pid {pid}) exited before it was SERVING")
        try:
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
            last = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                print(f"python-example: {service} is SERVING on {address}")
                sys.exit(0)
        except grpc.RpcError as error:
            last = f"{error.code().name}: {error.details()}"
        time.sleep(0.2)
sys.exit(f"the server was not SERVING after 60s (last: {last})")
PY

log "running watch_campaign.py --recipients $RECIPIENTS"
status=0
PYTHONUNBUFFERED=1 "$PYTHON" "$EXAMPLE/watch_campaign.py" --server "$ADDRESS" \
  --recipients "$RECIPIENTS" --timeout "$EXAMPLE_TIMEOUT" || status=$?

stop_server
if ((status == 0)); then
  log "passed"
else
  log "watch_campaign.py failed with status $status"
fi
exit "$status"
