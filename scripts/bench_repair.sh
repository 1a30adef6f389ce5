#!/usr/bin/env bash
# What a repair costs next to a full copy, in one run on the same data and the same
# emulated link (`docrepl link`, RTT and bandwidth cap below):
#   full copy  REPAIR_N documents copied from scratch to an empty target, the sink in the
#              other region consuming across the link (placement B of bench_link.sh):
#              until the target holds them all, then verify equal
#   repair     for each count in REPAIR_DIFFS (default 1 %, 0.1 % and 0.01 % of
#              REPAIR_N), that many of the target's documents changed by hand (half
#              updated, a quarter deleted, a quarter new ones added), then `docrepl
#              repair` with the source's digests served by `docrepl digests` across the
#              same kind of link: until it exits 0, then verify equal (so the next count
#              starts from equal sides)
# Each row: seconds, bytes over the link (both directions), bytes per difference. Own
# services on fresh data (in .data/bench-repair); results go to
# benches/results/repair-<shape>-<date>.md.
# Usage: scripts/bench_repair.sh   (REPAIR_N=1000000 REPAIR_DIFFS="10000 1000 100"
#        REPAIR_SHAPE=flat DELAY=37 MBIT=100)
set -euo pipefail
export DOCREPL_DATA="$(cd "$(dirname "$0")/.." && pwd)/.data/bench-repair"
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

REPAIR_N="${REPAIR_N:-1000000}"
REPAIR_DIFFS="${REPAIR_DIFFS:-$((REPAIR_N / 100)) $((REPAIR_N / 1000)) $((REPAIR_N / 10000))}"
# The documents: loadgen's shapes (flat ~80 B, nested ~350 B, text ~4 KB).
REPAIR_SHAPE="${REPAIR_SHAPE:-flat}"
DELAY="${DELAY:-37}" MBIT="${MBIT:-100}"
PLACEMENT=B
LINK_PORT=$((BROKER_PORT + 2)) KAFKA_LINK_LISTENER=$((BROKER_PORT + 3)) LINK_CONTROL=$((BROKER_PORT + 7))
DIGESTS_PORT=18231 DIGESTS_LINK=18232 DIGESTS_CONTROL=18233
WORK="$DOCREPL_DATA/bench-repair"

own_services
release_build
mkdir -p "$WORK"

config() { # config NAME: a pair over wan.c, the sink reaching the broker across the link
  cat >"$WORK/$1.toml" <<EOF
[source]
uri = "mongodb://127.0.0.1:$SOURCE_PORT/?replicaSet=rs-source"
database = "wan"
collections = ["c"]
[sink]
uri = "mongodb://127.0.0.1:$TARGET_PORT/?replicaSet=rs-target"
group_id = "g-$1"
[kafka]
bootstrap_servers = "$(bootstrap_for sink B)"
topic_prefix = "p-$1"
partitions = 8
[http]
listen = "127.0.0.1:0"
EOF
  sed "s|$(bootstrap_for sink B)|$(bootstrap_for source B)|" "$WORK/$1.toml" >"$WORK/$1-source.toml"
}
link_bytes() { curl -sf "http://127.0.0.1:$1/stats" | python3 -c "import json,sys; s=json.load(sys.stdin); print(s['bytes_up'] + s['bytes_down'])"; }
target_count() { count_docs "$TARGET_PORT" wan c; }
ROWS=()
# Each timed job starts from servers at rest: what the load (or the last job) wrote is
# checkpointed first, so a job does not pay for the one before it (the first repair,
# right after the copy, otherwise read both sides up to twice as slowly).
at_rest() { for port in "$SOURCE_PORT" "$TARGET_PORT"; do "$PY" -c "from pymongo import MongoClient; MongoClient('127.0.0.1', $port, directConnection=True).admin.command('fsync')" >/dev/null; done; }

log "loading $REPAIR_N documents into wan.c"
config copy
"$BIN" loadgen --config "$WORK/copy.toml" --collection c -n "$REPAIR_N" --database wan --shape "$REPAIR_SHAPE" >/dev/null
BSON_SIZE=$("$PY" -c "from pymongo import MongoClient; print(MongoClient('127.0.0.1', $SOURCE_PORT, directConnection=True)['wan'].command('collStats', 'c')['avgObjSize'])")

# The full copy, the broker in the source region, the sink across the link.
"$BIN" link --listen "127.0.0.1:$LINK_PORT" --to "127.0.0.1:$KAFKA_LINK_LISTENER" --delay-ms "$DELAY" --rate-mbit "$MBIT" --control "127.0.0.1:$LINK_CONTROL" 2>"$WORK/link-kafka.log" & OWN_PIDS+=($!)
wait_for port_open "$LINK_CONTROL"
at_rest
before=$(link_bytes "$LINK_CONTROL"); t0=$(now)
"$BIN" source --config "$WORK/copy-source.toml" 2>"$WORK/copy-source.log" & SRC=$!; OWN_PIDS+=("$SRC")
"$BIN" sink --config "$WORK/copy.toml" 2>"$WORK/copy-sink.log" & SNK=$!; OWN_PIDS+=("$SNK")
wait_for_copy() { [ "$(target_count)" -ge "$REPAIR_N" ]; }
wait_for wait_for_copy
t1=$(now); after=$(link_bytes "$LINK_CONTROL")
stop_pid "$SNK"; stop_pid "$SRC"
"$BIN" verify --config "$WORK/copy.toml" --documents-only --wait-for-quiet 60 >"$WORK/copy-verify.txt" || die "full copy not equal: $(cat "$WORK/copy-verify.txt")"
COPY_SECS=$(python3 -c "print(f'{$t1 - $t0:.1f}')") COPY_BYTES=$((after - before))
log "full copy: $COPY_SECS s, $COPY_BYTES bytes over the link"
ROWS+=("full copy|$REPAIR_N documents|$COPY_SECS|$COPY_BYTES|-")

# The source's digests next to it, reached across the same kind of link.
"$BIN" digests --config "$WORK/copy.toml" --listen "127.0.0.1:$DIGESTS_PORT" 2>"$WORK/digests.log" & OWN_PIDS+=($!)
"$BIN" link --listen "127.0.0.1:$DIGESTS_LINK" --to "127.0.0.1:$DIGESTS_PORT" --delay-ms "$DELAY" --rate-mbit "$MBIT" --control "127.0.0.1:$DIGESTS_CONTROL" 2>"$WORK/link-digests.log" & OWN_PIDS+=($!)
wait_for port_open "$DIGESTS_PORT"; wait_for port_open "$DIGESTS_CONTROL"

for CHANGED in $REPAIR_DIFFS; do
  # The target drifts by hand: CHANGED documents.
  "$PY" - "$TARGET_PORT" "$CHANGED" <<'PY'
import random, sys
from pymongo import MongoClient, UpdateOne, DeleteOne
port, changed = int(sys.argv[1]), int(sys.argv[2])
c = MongoClient("127.0.0.1", port, directConnection=True)["wan"]["c"]
ids = [d["_id"] for d in c.find({"_id": {"$type": "number"}}, {"_id": 1})]
random.seed(changed)
picked = random.sample(ids, changed * 3 // 4)
updates, deletes = picked[: changed // 2], picked[changed // 2 :]
c.bulk_write([UpdateOne({"_id": i}, {"$set": {"drifted": True}}) for i in updates], ordered=False)
c.bulk_write([DeleteOne({"_id": i}) for i in deletes], ordered=False)
c.insert_many([{"_id": f"drift-{changed}-{k}", "only": "target"} for k in range(changed - len(picked))], ordered=False)
PY
  at_rest
  before=$(link_bytes "$DIGESTS_CONTROL"); t0=$(now)
  "$BIN" repair --config "$WORK/copy.toml" --source-digests "http://127.0.0.1:$DIGESTS_LINK" --settle-ms 0 >"$WORK/repair-$CHANGED.txt" 2>"$WORK/repair-$CHANGED.log" \
    || die "repair failed: $(cat "$WORK/repair-$CHANGED.txt") $(tail -n 5 "$WORK/repair-$CHANGED.log")"
  t1=$(now); after=$(link_bytes "$DIGESTS_CONTROL")
  "$BIN" verify --config "$WORK/copy.toml" --documents-only >"$WORK/repair-verify.txt" || die "repair not equal: $(cat "$WORK/repair-verify.txt")"
  secs=$(python3 -c "print(f'{$t1 - $t0:.1f}')") bytes=$((after - before))
  log "repair of $CHANGED differences: $secs s, $bytes bytes over the link"
  ROWS+=("repair|$CHANGED of $REPAIR_N differ|$secs|$bytes|$((bytes / CHANGED))")
  [ -n "${FIRST_REPAIR:-}" ] || { FIRST_REPAIR=$CHANGED REPAIR_SECS=$secs REPAIR_BYTES=$bytes; }
done

mkdir -p "$DOCREPL_ROOT/benches/results"
OUT="$DOCREPL_ROOT/benches/results/repair-$REPAIR_SHAPE-$(date +%Y%m%d).md"
{
  echo "Repair next to a full copy: $REPAIR_N documents of $BSON_SIZE bytes BSON, some changed on the target by hand (half updated, a quarter deleted, a quarter added); link RTT $((2 * DELAY)) ms, $MBIT Mbit/s each way ($(nproc) cores, mongod $MONGOD_VERSION x2, Apache Kafka $KAFKA_VERSION, all on loopback; \`scripts/bench_repair.sh\`, $(date -u +%Y-%m-%d))."
  echo
  echo "| job | data | seconds | bytes over the link | bytes per difference |"
  echo "|---|---|---|---|---|"
  for row in "${ROWS[@]}"; do IFS='|' read -r a b c d e <<<"$row"; printf '| %s | %s | %s | %s | %s |\n' "$a" "$b" "$c" "$(printf "%'d" "$d")" "$e"; done
  echo
  echo "Repair of $FIRST_REPAIR differences vs full copy: $(python3 -c "print(f'{$REPAIR_SECS / $COPY_SECS:.3f}')") of the time, $(python3 -c "print(f'{$REPAIR_BYTES / $COPY_BYTES:.4f}')") of the bytes."
  echo
  echo '```'
  for CHANGED in $REPAIR_DIFFS; do cat "$WORK/repair-$CHANGED.txt"; done
  echo '```'
} | tee "$OUT"
