#!/usr/bin/env bash
# Many collections: `scripts/many_collections.sh [N]` (default 200) creates N small
# collections in one source database, starts `docrepl run` (collections = [], one
# partition per topic) on its own services, and prints (see many_collections.py): the
# time until every collection streams, lease-loss warnings, source connections held,
# end-to-end lag p50/p99 of writes spread over random collections (under LOAD docs/s,
# default 1000), idle CPU and RSS.
set -euo pipefail
N="${1:-200}"
# TOPIC_PER=database: one topic for the database (with PARTITIONS partitions, default 8)
# instead of one per collection (default, PARTITIONS default 1).
TOPIC_PER="${TOPIC_PER:-collection}"
if [ "$TOPIC_PER" = database ]; then PARTITIONS="${PARTITIONS:-8}"; EXPECT_PARTITIONS="$PARTITIONS"; else PARTITIONS="${PARTITIONS:-1}"; EXPECT_PARTITIONS=$((N * PARTITIONS)); fi
export EXPECT_PARTITIONS
export DOCREPL_DATA="$(cd "$(dirname "$0")/.." && pwd)/.data/many"
export DOCREPL_SOURCE_PORT=28617 DOCREPL_TARGET_PORT=28717 DOCREPL_BROKER_PORT=19692
. "$(dirname "$0")/lib.sh"
cd "$DOCREPL_ROOT"

own_services
release_build
WORK="$DOCREPL_DATA/run"
mkdir -p "$WORK"
cat >"$WORK/many.toml" <<TOML
[source]
uri = "mongodb://127.0.0.1:$SOURCE_PORT/?replicaSet=rs-source"
database = "many"
[sink]
uri = "mongodb://127.0.0.1:$TARGET_PORT/?replicaSet=rs-target"
[kafka]
bootstrap_servers = "127.0.0.1:$BROKER_PORT"
topic_prefix = "many"
partitions = $PARTITIONS
topic_per = "$TOPIC_PER"
[http]
listen = "127.0.0.1:18690"
TOML
"$PY" "$DOCREPL_ROOT/scripts/many_collections.py" create "$SOURCE_PORT" many "$N"
"$BIN" run --config "$WORK/many.toml" 2>"$WORK/docrepl.log" &
pid=$!
OWN_PIDS+=("$pid")
"$PY" "$DOCREPL_ROOT/scripts/many_collections.py" measure "$SOURCE_PORT" "$TARGET_PORT" 18690 many "$N" "$pid" "$WORK/docrepl.log"
