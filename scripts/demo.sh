#!/usr/bin/env bash
# The local demo, start to finish on a fresh machine: installs the tools (cached), starts
# two replica sets and a broker on 127.0.0.1, builds docrepl, loads documents into the
# source, runs `docrepl run` (source + sink in one process), keeps writing while it runs,
# verifies the target equals the source, and leaves the pipeline running with its status
# page. DEMO_DOCS (default 200000) sets how many documents are loaded first.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$DOCREPL_ROOT"

"$DOCREPL_ROOT/scripts/setup.sh"
"$DOCREPL_ROOT/scripts/services.sh" start

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$DOCREPL_CACHE/target}"
log "building docrepl (release)"
cargo build --release --quiet
BIN="$CARGO_TARGET_DIR/release/docrepl"
CONFIG="$DOCREPL_ROOT/deploy/local/docrepl.toml"
DOCS="${DEMO_DOCS:-200000}"
RUN_DIR="$DOCREPL_DATA/demo"
mkdir -p "$RUN_DIR"

if [ -f "$RUN_DIR/docrepl.pid" ] && kill -0 "$(cat "$RUN_DIR/docrepl.pid")" 2>/dev/null; then
  log "stopping the previous demo's docrepl (pid $(cat "$RUN_DIR/docrepl.pid"))"
  kill -TERM "$(cat "$RUN_DIR/docrepl.pid")" || true
  sleep 3
fi

log "loading $DOCS documents into the source (app.orders)"
"$BIN" loadgen --config "$CONFIG" --collection orders -n "$DOCS" --append --shape nested

log "starting docrepl run (log: $RUN_DIR/docrepl.log)"
nohup "$BIN" run --config "$CONFIG" >"$RUN_DIR/docrepl.log" 2>&1 </dev/null &
echo $! >"$RUN_DIR/docrepl.pid"

log "writing more while it replicates: inserts, updates, deletes, replaces"
"$BIN" loadgen --config "$CONFIG" --collection orders -n 20000 --mix 40:40:10:10 --hot 5000 --rate 5000 --shape nested

log "waiting until the target equals the source"
"$BIN" verify --config "$CONFIG" --collection orders --wait-for-quiet 300

"$BIN" status --url "http://127.0.0.1:8088"
cat <<MSG

docrepl is running (pid $(cat "$RUN_DIR/docrepl.pid")), replicating app.* from
mongodb://127.0.0.1:$SOURCE_PORT to mongodb://127.0.0.1:$TARGET_PORT through 127.0.0.1:$BROKER_PORT.
  status:   $BIN status --url http://127.0.0.1:8088   (JSON: curl http://127.0.0.1:8088/status)
  metrics:  curl http://127.0.0.1:8088/metrics
  verify:   $BIN verify --config $CONFIG
  stop:     kill \$(cat $RUN_DIR/docrepl.pid); scripts/services.sh stop
MSG
