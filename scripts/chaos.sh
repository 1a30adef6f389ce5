#!/usr/bin/env bash
# The fault suite: `scripts/chaos.sh [TRIALS]` (default 3). Each trial runs its own
# services (own ports, a cluster of three Apache Kafka nodes with replication factor 3 and
# min.insync.replicas 2), a docrepl source and two sinks in one group, and a mixed load (inserts, updates, deletes, replaces over a few
# thousand hot `_id`s plus new ones, documents with every BSON type). The regions are
# joined by an emulated WAN link (`docrepl link`, RTT 100 ms, 1 Gbit/s) with the broker in
# the target region on odd trials (placement A: the source produces across the link) and
# in the source region on even ones (B: the sinks consume across it); the side across
# reaches the brokers through their listeners that advertise the link's near end (a link
# per node, cut and shaped together). During the load it injects, in random order at
# random moments:
#   kill -9 of the source service, then a restart
#   kill -9 of one of the two sinks, then a restart
#   kill -9 of one broker of the three (10 s down, then started again), a graceful
#   restart of another, the whole cluster down for 60 s while the source keeps writing,
#   and every partition's leader moved by a reassignment
#   a restart of the target mongod, then of the source mongod
#   on the link: a 30 s black-hole cut (connections accepted but silent, no reset), a
#   flapping link (4 times: every connection reset, 2 s down, 3 s up), and 60 s at 1 Mbit/s
# After each link fault, the end-to-end lag (probe writes on the source timed to the
# target) must be back under 1 s within 30 s of the link returning. After the load,
# `docrepl verify --wait-for-quiet` must say equal, with no manual step.
# Prints a line per trial and `passed N / TRIALS`; exit 0 only when every trial passed.
set -euo pipefail
TRIALS="${1:-3}"
export DOCREPL_DATA="$(cd "$(dirname "$0")/.." && pwd)/.data/chaos"
export DOCREPL_SOURCE_PORT=29117 DOCREPL_TARGET_PORT=29217 DOCREPL_BROKER_PORT=19292 DOCREPL_KAFKA_NODES=3
. "$(dirname "$0")/lib.sh"
cd "$DOCREPL_ROOT"

"$DOCREPL_ROOT/scripts/setup.sh"
release_build
SERVICES="$DOCREPL_ROOT/scripts/services.sh"

# Node 1's first link listener (lib.sh's default: BROKER_PORT + 3, advertising + 2); node
# i's, its link and the link's control port are the same shifted by 10 * (i - 1), as its
# other ports (services.sh).
LINK_DELAY_MS=50 LINK_PORT=$((BROKER_PORT + 2)) KAFKA_LINK_LISTENER=$((BROKER_PORT + 3)) LINK_CONTROL=$((BROKER_PORT + 7))
NODES=$(seq 0 $((KAFKA_NODES - 1)))

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

# The link between the regions: one relay per broker node, to its link listener (stopped
# with the docrepl processes).
start_link() {
  local i
  for i in $NODES; do
    spawn "link$i" link --listen "127.0.0.1:$((LINK_PORT + 10 * i))" --to "127.0.0.1:$((KAFKA_LINK_LISTENER + 10 * i))" \
      --delay-ms "$LINK_DELAY_MS" --control "127.0.0.1:$((LINK_CONTROL + 10 * i))"
  done
  for i in $NODES; do
    for _ in $(seq 1 50); do port_open "$((LINK_CONTROL + 10 * i))" && continue 2; sleep 0.2; done
    echo "the link did not start: $WORK/link$i.log" >&2
    exit 1
  done
}
# link_control ACTION: the same action on every node's relay (one link between regions).
link_control() {
  local i
  for i in $NODES; do curl -sf -X POST "http://127.0.0.1:$((LINK_CONTROL + 10 * i))/$1" >/dev/null; done
}
# lag_back FAULT: after the link returned, probe writes until one reaches the target within
# 1 s; records how long after the return that was (a failure beyond 30 s).
lag_back() {
  local secs
  secs=$("$PY" - "$SOURCE_PORT" "$TARGET_PORT" <<'PY'
import sys, time
from pymongo import MongoClient
source = MongoClient("127.0.0.1", int(sys.argv[1]), directConnection=True, serverSelectionTimeoutMS=5000)["chaos"]["probe"]
target = MongoClient("127.0.0.1", int(sys.argv[2]), directConnection=True, serverSelectionTimeoutMS=5000)["chaos"]["probe"]
returned = time.time()
while time.time() - returned < 90:
    written = time.time()
    _id = source.insert_one({"written": written}).inserted_id
    while time.time() - written < 1.0:
        if target.find_one({"_id": _id}) is not None:
            print(f"{written - returned:.1f}")
            sys.exit(0)
        time.sleep(0.05)
print("never")
PY
) || secs=never
  LAG_BACK+=("$1 $secs s")
  if [ "$secs" = never ] || python3 -c "import sys; sys.exit(0 if float('$secs') > 30 else 1)"; then
    LAG_FAILED+=("$1: lag back under 1 s only after $secs s")
  fi
}

# The faults. Each leaves everything running again when it returns.
fault_kill_source() { kill9 source; sleep 1; spawn source source --config "$SOURCE_CONFIG"; }
fault_kill_sink() { local s="sink$((RANDOM % 2 + 1))"; kill9 "$s"; sleep 1; spawn "$s" sink --config "$SINK_CONFIG"; }
fault_kill_broker() {
  local node=$((RANDOM % KAFKA_NODES + 1))
  kill -KILL "$(cat "$DOCREPL_DATA/broker/node$node/kafka.pid")" 2>/dev/null || true
  sleep 10
  "$SERVICES" start "broker:$node" >/dev/null 2>&1
}
fault_restart_broker() { local node=$((RANDOM % KAFKA_NODES + 1)); "$SERVICES" stop "broker:$node" >/dev/null 2>&1; "$SERVICES" start "broker:$node" >/dev/null 2>&1; }
fault_cluster_outage() { "$SERVICES" stop broker >/dev/null 2>&1; sleep 60; "$SERVICES" start broker >/dev/null 2>&1; }
# Every partition of the trial's topics gets its replica list rotated by one, then the
# preferred leaders are elected: each leader moves to another node under the load.
fault_move_leaders() {
  local plan="$WORK/reassignment.json" state
  "$SERVICES" kafka-tool org.apache.kafka.tools.TopicCommand --describe --topic 'chaos\..*' 2>/dev/null | python3 -c '
import json, re, sys
partitions = []
for line in sys.stdin:
    m = re.search(r"Topic: (\S+)\s+Partition: (\d+)\s+Leader: (-?\d+)\s+Replicas: ([\d,]+)", line)
    if m:
        replicas = [int(r) for r in m.group(4).split(",")]
        partitions.append({"topic": m.group(1), "partition": int(m.group(2)), "replicas": replicas[1:] + replicas[:1]})
json.dump({"version": 1, "partitions": partitions}, sys.stdout)' >"$plan"
  "$SERVICES" kafka-tool org.apache.kafka.tools.reassign.ReassignPartitionsCommand --execute --reassignment-json-file "$plan" >"$WORK/reassignment.log" 2>&1 \
    || { LAG_FAILED+=("move_leaders: the reassignment was refused ($WORK/reassignment.log)"); return; }
  for _ in $(seq 1 60); do
    state=$("$SERVICES" kafka-tool org.apache.kafka.tools.reassign.ReassignPartitionsCommand --verify --reassignment-json-file "$plan" 2>&1 || true)
    if [[ "$state" == *"is completed"* && "$state" != *"in progress"* ]]; then
      "$SERVICES" kafka-tool org.apache.kafka.tools.LeaderElectionCommand --election-type PREFERRED --all-topic-partitions >>"$WORK/reassignment.log" 2>&1 || true
      return
    fi
    sleep 1
  done
  LAG_FAILED+=("move_leaders: the reassignment did not complete within 60 s ($WORK/reassignment.log)")
}
fault_restart_target() { "$SERVICES" stop target >/dev/null 2>&1; sleep 2; "$SERVICES" start target >/dev/null 2>&1; }
fault_restart_source_mongod() { "$SERVICES" stop source >/dev/null 2>&1; sleep 2; "$SERVICES" start source >/dev/null 2>&1; }
fault_link_blackhole() { link_control cut/blackhole; sleep 30; link_control restore; lag_back link_blackhole; }
fault_link_flap() { for _ in 1 2 3 4; do link_control cut/reset; sleep 2; link_control restore; sleep 3; done; lag_back link_flap; }
fault_link_slow() { link_control "shape?delay_ms=$LINK_DELAY_MS&rate_mbit=1"; sleep 60; link_control "shape?delay_ms=$LINK_DELAY_MS"; lag_back link_slow; }
FAULTS=(kill_source kill_sink kill_broker restart_broker cluster_outage move_leaders restart_target restart_source_mongod link_blackhole link_flap link_slow)

passed=0
for trial in $(seq 1 "$TRIALS"); do
  started=$(date +%s)
  "$SERVICES" stop >/dev/null 2>&1 || true
  rm -rf "$DOCREPL_DATA"
  "$SERVICES" start >/dev/null 2>&1
  WORK="$DOCREPL_DATA/trial-$trial"
  mkdir -p "$WORK"
  if [ $((trial % 2)) = 1 ]; then placement=A; else placement=B; fi
  start_link
  # Each side's file: the same but for its way to the broker.
  for side in source sink; do
    bootstrap=$(bootstrap_for "$side" "$placement")
    cat >"$WORK/$side.toml" <<EOF
[source]
uri = "mongodb://127.0.0.1:$SOURCE_PORT/?replicaSet=rs-source"
database = "chaos"
collections = ["c", "probe"]
checkpoint_interval_ms = 500
lease_ttl_ms = 6000
[sink]
uri = "mongodb://127.0.0.1:$TARGET_PORT/?replicaSet=rs-target"
group_id = "chaos-$trial"
session_timeout_ms = 6000
max_backoff_ms = 1000
[kafka]
bootstrap_servers = "$bootstrap"
topic_prefix = "chaos"
partitions = 4
[http]
listen = "127.0.0.1:0"
[log]
level = "info,rdkafka=warn"
EOF
  done
  SOURCE_CONFIG="$WORK/source.toml" SINK_CONFIG="$WORK/sink.toml" CONFIG="$WORK/source.toml"
  # Hot documents of every BSON type exist before the services start (initial copy).
  "$BIN" loadgen --config "$CONFIG" --collection c -n 3000 --shape types --seed "$trial" >"$WORK/preload.log" 2>&1
  spawn source source --config "$SOURCE_CONFIG"
  spawn sink1 sink --config "$SINK_CONFIG"
  spawn sink2 sink --config "$SINK_CONFIG"
  # Mixed load while the faults run (stopped 5 s after the last): new documents and
  # changes to the hot ones.
  "$BIN" loadgen --config "$CONFIG" --collection c -n 1000000 --shape types --mix 40:30:15:15 --hot 3000 \
    --append --rate 500 --batch 50 --concurrency 2 --seed "$trial" >"$WORK/load.log" 2>&1 &
  load=$!

  done_faults=() LAG_BACK=() LAG_FAILED=()
  for f in $(printf '%s\n' "${FAULTS[@]}" | shuf --random-source=<(yes "$trial")); do
    sleep $((3 + RANDOM % 6))
    "fault_$f"
    done_faults+=("$f")
  done
  sleep 5
  kill -INT "$load" 2>/dev/null || true
  wait "$load" || true

  if ! "$BIN" verify --config "$CONFIG" --collection c --wait-for-quiet 300 >"$WORK/verify.log" 2>&1; then
    result="FAILED ($(tail -n 3 "$WORK/verify.log" | tr '\n' ' '))"
  elif [ "${#LAG_FAILED[@]}" -gt 0 ]; then
    result="FAILED (${LAG_FAILED[*]})"
  else
    result=passed; passed=$((passed + 1))
  fi
  echo "trial $trial (placement $placement): $result in $(( $(date +%s) - started )) s; $(grep -o 'loadgen: .* docs into .*' "$WORK/load.log" | tail -1); $(grep -o '[a-z]*.c: [A-Z]* (.*)' "$WORK/verify.log" | tail -1); lag back under 1 s after the link returned: ${LAG_BACK[*]}; faults: ${done_faults[*]}; logs in $WORK"
  stop_docrepl
done
"$SERVICES" stop >/dev/null 2>&1 || true
echo "passed $passed / $TRIALS"
[ "$passed" = "$TRIALS" ]
