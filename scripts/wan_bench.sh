#!/usr/bin/env bash
# Cross-region change-stream catch-up: `scripts/wan_bench.sh [N]` (default 200,000).
# One job, the same data, several link settings, in one run: the source saved its position
# on an empty collection, N inserts arrive while it is stopped, then source and sink start
# together and the time until the target holds all N documents (then `verify` equal) is
# the catch-up. Between the regions runs `docrepl link` (one-way delay, bandwidth cap);
# the broker sits in the target region (placement A: the source produces across the link)
# or in the source region (B: the sink consumes across it), reached across the link
# through a Kafka-protocol proxy that advertises the link's near end. Prints a table with
# docs/s, the ratio to the same placement at RTT 0, and bytes per document that crossed
# the link (both directions), and saves it under benches/results/.
# Settings: WAN_SETTINGS="A:0:1000 A:25:1000 ..." (placement:one-way ms:Mbit/s).
set -euo pipefail
N="${1:-${N:-200000}}"
SETTINGS="${WAN_SETTINGS:-A:0:1000 B:0:1000 A:25:1000 B:25:1000 A:75:1000 B:75:1000 A:75:100 B:75:100}"
export DOCREPL_DATA="$(cd "$(dirname "$0")/.." && pwd)/.data/wan-bench"
export DOCREPL_SOURCE_PORT=28817 DOCREPL_TARGET_PORT=28917 DOCREPL_BROKER_PORT=19892
export DOCREPL_BROKER_STORAGE=memory
. "$(dirname "$0")/lib.sh"
cd "$DOCREPL_ROOT"

own_services
release_build
WORK="$DOCREPL_DATA/run"
mkdir -p "$WORK" "$DOCREPL_ROOT/benches/results"
PROXY_PORT=19893 LINK_PORT=19894 LINK_CONTROL=19895

# config NAME BOOTSTRAP_FOR_SOURCE BOOTSTRAP_FOR_SINK: the source's and the sink's files.
config() {
  for side in source sink; do
    local bootstrap="$2"; [ "$side" = sink ] && bootstrap="$3"
    cat >"$WORK/$1-$side.toml" <<EOF
[source]
uri = "mongodb://127.0.0.1:$SOURCE_PORT/?replicaSet=rs-source"
database = "wan"
collections = ["$1"]
[sink]
uri = "mongodb://127.0.0.1:$TARGET_PORT/?replicaSet=rs-target"
group_id = "g-$1"
[kafka]
bootstrap_servers = "$bootstrap"
topic_prefix = "p-$1"
partitions = 8
[http]
listen = "127.0.0.1:$([ "$side" = source ] && echo 18801 || echo 18802)"
[log]
level = "info"
EOF
  done
}

now() { date +%s.%N; }
target_count() { "$PY" -c "
import sys
from pymongo import MongoClient
print(MongoClient('127.0.0.1', $TARGET_PORT, directConnection=True)['wan'][sys.argv[1]].count_documents({}))" "$1" 2>/dev/null || echo 0; }
wait_for() { local deadline=$(( $(date +%s) + 1800 )); until "$@"; do [ "$(date +%s)" -lt "$deadline" ] || die "timed out: $*"; sleep 0.3; done; }
target_has() { [ "$(target_count "$1")" -ge "$2" ]; }
stop_pid() { kill -TERM "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
link_bytes() { curl -sf "http://127.0.0.1:$LINK_CONTROL/stats" | python3 -c "import json,sys; s=json.load(sys.stdin); print(s['bytes_up'] + s['bytes_down'])"; }

rows=()
declare -A base
i=0
for setting in $SETTINGS; do
  IFS=: read -r placement delay mbit <<<"$setting"
  i=$((i + 1))
  name="c$i"
  # The link and its proxy (also at RTT 0: the same path, no delay).
  "$BIN" link --listen "127.0.0.1:$LINK_PORT" --to "127.0.0.1:$PROXY_PORT" --delay-ms "$delay" --rate-mbit "$mbit" --control "127.0.0.1:$LINK_CONTROL" 2>"$WORK/link-$name.log" & LINK=$!
  "$NISSHI_BIN" proxy --listener-url "tcp://127.0.0.1:$PROXY_PORT" --advertised-listener-url "tcp://127.0.0.1:$LINK_PORT" --origin-url "tcp://127.0.0.1:$BROKER_PORT" >/dev/null 2>&1 & PROXY=$!
  OWN_PIDS+=("$LINK" "$PROXY")
  wait_for port_open "$LINK_CONTROL"
  wait_for port_open "$PROXY_PORT"
  across="127.0.0.1:$LINK_PORT" direct="127.0.0.1:$BROKER_PORT"
  if [ "$placement" = A ]; then config "$name" "$across" "$direct"; else config "$name" "$direct" "$across"; fi
  # The saved position on the empty collection, then the backlog while the source is down.
  "$PY" -c "from pymongo import MongoClient; MongoClient('127.0.0.1', $SOURCE_PORT, directConnection=True)['wan'].create_collection('$name')"
  "$BIN" source --config "$WORK/$name-source.toml" 2>"$WORK/source0-$name.log" & SRC=$!
  wait_for grep -q "streaming changes" "$WORK/source0-$name.log"
  sleep 1
  stop_pid $SRC
  "$BIN" loadgen --config "$WORK/$name-source.toml" --collection "$name" -n "$N" --database wan --append >/dev/null
  before=$(link_bytes)
  t0=$(now)
  "$BIN" source --config "$WORK/$name-source.toml" 2>"$WORK/source-$name.log" & SRC=$!
  "$BIN" sink --config "$WORK/$name-sink.toml" 2>"$WORK/sink-$name.log" & SNK=$!
  wait_for target_has "$name" "$N"
  t1=$(now)
  after=$(link_bytes)
  "$BIN" verify --config "$WORK/$name-source.toml" --collection "$name" --wait-for-quiet 60 --documents-only >"$WORK/verify-$name.txt" || die "verify $setting: $(cat "$WORK/verify-$name.txt")"
  stop_pid $SNK; stop_pid $SRC; stop_pid $PROXY; stop_pid $LINK
  read -r rate secs per_doc < <(python3 -c "n=$N; t=$t1-$t0; print(f'{n/t:.0f} {t:.1f} {($after-$before)/n:.0f}')")
  [ "$delay" = 0 ] && base[$placement]=$rate
  ratio=$(python3 -c "b=${base[$placement]:-0}; print(f'{$rate/b:.2f}' if b else '-')")
  rows+=("| $placement | $((2 * delay)) | $mbit | $rate ($secs s) | $ratio | $per_doc |")
  log "$setting: $rate docs/s, ${secs} s, $per_doc bytes/doc on the link"
done

stamp=$(date -u +%Y%m%dT%H%M%SZ)
md="$DOCREPL_ROOT/benches/results/wan-$N-$stamp.md"
{
  echo "Change-stream catch-up of $N small inserts across an emulated link ($(nproc) cores, mongod 6.0.5 x2, nisshi memory broker, all on loopback; A: broker in the target region, B: in the source region)"
  echo
  echo "| placement | RTT (ms) | link (Mbit/s) | catch-up docs/s | vs RTT 0 | bytes/doc on the link |"
  echo "|---|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
} >"$md"
cat "$md"
