#!/usr/bin/env bash
# The fault suite: `scripts/chaos.sh [TRIALS]` (default 3). Each trial runs its own
# services (own ports, sqlite broker so a restart keeps the log), a docrepl source and two
# sinks in one group, and a mixed load (inserts, updates, deletes, replaces over a few
# thousand hot `_id`s plus new ones, documents with every BSON type). During the load it
# injects, in random order at random moments:
#   kill -9 of the source service, then a restart
#   kill -9 of one of the two sinks, then a restart
#   a broker restart, and a 20 s broker outage while the source keeps writing
#   a restart of the target mongod, then of the source mongod
# After the load, `docrepl verify --wait-for-quiet` must say equal, with no manual step.
# Prints a line per trial and `passed N / TRIALS`; exit 0 only when every trial passed.
set -euo pipefail
TRIALS="${1:-3}"
export DOCREPL_DATA="$(cd "$(dirname "$0")/.." && pwd)/.data/chaos"
export DOCREPL_SOURCE_PORT=29117 DOCREPL_TARGET_PORT=29217 DOCREPL_BROKER_PORT=19292
export DOCREPL_BROKER_STORAGE=sqlite
. "$(dirname "$0")/lib.sh"
cd "$DOCREPL_ROOT"

"$DOCREPL_ROOT/scripts/setup.sh"
release_build
SERVICES="$DOCREPL_ROOT/scripts/services.sh"

PIDS=()
stop_docrepl() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  PIDS=()
}
cleanup() { stop_docrepl; "$SERVICES" stop >/dev/null 2>&1 || true; }
trap cleanup EXIT

# spawn NAME ARGS...: starts a docrepl process in the background, its log in $WORK/NAME.log.
declare -A PID_OF
spawn() {
  local name=$1; shift
  "$BIN" "$@" >>"$WORK/$name.log" 2>&1 &
  PID_OF[$name]=$!
  PIDS+=("$!")
}
kill9() { kill -KILL "${PID_OF[$1]}" 2>/dev/null || true; wait "${PID_OF[$1]}" 2>/dev/null || true; }

# The faults. Each leaves everything running again when it returns.
fault_kill_source() { kill9 source; sleep 1; spawn source source --config "$CONFIG"; }
fault_kill_sink() { local s="sink$((RANDOM % 2 + 1))"; kill9 "$s"; sleep 1; spawn "$s" sink --config "$CONFIG"; }
fault_restart_broker() { "$SERVICES" stop broker >/dev/null 2>&1; "$SERVICES" start broker >/dev/null 2>&1; }
fault_broker_outage() { "$SERVICES" stop broker >/dev/null 2>&1; sleep 20; "$SERVICES" start broker >/dev/null 2>&1; }
fault_restart_target() { "$SERVICES" stop target >/dev/null 2>&1; sleep 2; "$SERVICES" start target >/dev/null 2>&1; }
fault_restart_source_mongod() { "$SERVICES" stop source >/dev/null 2>&1; sleep 2; "$SERVICES" start source >/dev/null 2>&1; }
FAULTS=(kill_source kill_sink restart_broker broker_outage restart_target restart_source_mongod)

passed=0
for trial in $(seq 1 "$TRIALS"); do
  started=$(date +%s)
  "$SERVICES" stop >/dev/null 2>&1 || true
  rm -rf "$DOCREPL_DATA"
  "$SERVICES" start >/dev/null 2>&1
  WORK="$DOCREPL_DATA/trial-$trial"
  mkdir -p "$WORK"
  CONFIG="$WORK/docrepl.toml"
  cat >"$CONFIG" <<EOF
[source]
uri = "mongodb://127.0.0.1:$SOURCE_PORT/?replicaSet=rs-source"
database = "chaos"
collections = ["c"]
checkpoint_interval_ms = 500
lease_ttl_ms = 6000
[sink]
uri = "mongodb://127.0.0.1:$TARGET_PORT/?replicaSet=rs-target"
group_id = "chaos-$trial"
session_timeout_ms = 6000
max_backoff_ms = 1000
[kafka]
bootstrap_servers = "127.0.0.1:$BROKER_PORT"
topic_prefix = "chaos"
partitions = 4
[http]
listen = "127.0.0.1:0"
[log]
level = "info,rdkafka=warn"
EOF
  # Hot documents of every BSON type exist before the services start (initial copy).
  "$BIN" loadgen --config "$CONFIG" --collection c -n 3000 --shape types --seed "$trial" >"$WORK/preload.log" 2>&1
  spawn source source --config "$CONFIG"
  spawn sink1 sink --config "$CONFIG"
  spawn sink2 sink --config "$CONFIG"
  # About 80 s of mixed load: new documents and changes to the hot ones.
  "$BIN" loadgen --config "$CONFIG" --collection c -n 40000 --shape types --mix 40:30:15:15 --hot 3000 \
    --append --rate 500 --batch 50 --concurrency 2 --seed "$trial" >"$WORK/load.log" 2>&1 &
  load=$!

  done_faults=()
  for f in $(printf '%s\n' "${FAULTS[@]}" | shuf --random-source=<(yes "$trial")); do
    sleep $((3 + RANDOM % 6))
    "fault_$f"
    done_faults+=("$f")
  done
  wait "$load" || true

  if "$BIN" verify --config "$CONFIG" --collection c --wait-for-quiet 300 >"$WORK/verify.log" 2>&1; then
    result=passed; passed=$((passed + 1))
  else
    result="FAILED ($(tail -n 3 "$WORK/verify.log" | tr '\n' ' '))"
  fi
  echo "trial $trial: $result in $(( $(date +%s) - started )) s; $(grep -o 'loadgen: .* docs into .*' "$WORK/load.log" | tail -1); $(grep -o '[a-z]*.c: [A-Z]* (.*)' "$WORK/verify.log" | tail -1); faults: ${done_faults[*]}; logs in $WORK"
  stop_docrepl
done
"$SERVICES" stop >/dev/null 2>&1 || true
echo "passed $passed / $TRIALS"
[ "$passed" = "$TRIALS" ]
