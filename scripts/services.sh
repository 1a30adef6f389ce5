#!/usr/bin/env bash
# Starts, stops and reports the local services docrepl runs against, all on 127.0.0.1:
#   source mongod  (replica set rs-source)  port $DOCREPL_SOURCE_PORT (27117)
#   target mongod  (replica set rs-target)  port $DOCREPL_TARGET_PORT (27217)
#   broker nisshi  (Kafka protocol)         port $DOCREPL_BROKER_PORT (19092)
# Data, logs and pid files live under $DOCREPL_DATA (default .data/ in the checkout).
# DOCREPL_BROKER_STORAGE=memory runs the broker in memory (faster, not persistent);
# the default keeps its log in sqlite. `start` is idempotent; `stop` stops only what it started.
# `start`/`stop` take the components to act on (`source`, `target`, `broker`; default all),
# which the fault suite uses to restart one of them.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

usage() { echo "usage: $0 start|stop [source|target|broker ...] | status" >&2; exit 2; }

start_mongod() { # name port
  local name=$1 port=$2 dir="$DOCREPL_DATA/$1"
  local pidf="$dir/mongod.pid"
  if pid_alive "$pidf"; then log "$name mongod already running on 127.0.0.1:$port (pid $(cat "$pidf"))"; return; fi
  port_open "$port" && die "port $port (for the $name mongod) is taken by another process; stop it or set DOCREPL_${name^^}_PORT"
  [ -x "$MONGOD_BIN" ] || die "mongod not installed: run scripts/setup.sh first"
  mkdir -p "$dir/db"
  "$MONGOD_BIN" --bind_ip 127.0.0.1 --port "$port" --replSet "rs-$name" --dbpath "$dir/db" \
    --wiredTigerCacheSizeGB 1 --oplogSize 4096 --fork --logpath "$dir/mongod.log" --pidfilepath "$pidf" >/dev/null \
    || die "$name mongod did not start: see $dir/mongod.log"
  "$PY" - "$name" "$port" <<'PYEOF' || die "$name replica set did not become primary: see $DOCREPL_DATA/$name/mongod.log"
import sys, time
from pymongo import MongoClient
from pymongo.errors import OperationFailure
name, port = sys.argv[1], int(sys.argv[2])
c = MongoClient("127.0.0.1", port, directConnection=True, serverSelectionTimeoutMS=20000)
try:
    c.admin.command("replSetInitiate", {"_id": f"rs-{name}", "members": [{"_id": 0, "host": f"127.0.0.1:{port}"}]})
except OperationFailure as e:
    if e.code != 23:  # AlreadyInitialized: a restart over existing data
        raise
deadline = time.time() + 60
while time.time() < deadline:
    if c.admin.command("hello").get("isWritablePrimary"):
        sys.exit(0)
    time.sleep(0.2)
sys.exit(1)
PYEOF
  log "$name mongod: mongodb://127.0.0.1:$port/?replicaSet=rs-$name (pid $(cat "$pidf"))"
}

start_broker() {
  local dir="$DOCREPL_DATA/broker" pidf="$DOCREPL_DATA/broker/nisshi.pid"
  if pid_alive "$pidf"; then log "broker already running on 127.0.0.1:$BROKER_PORT (pid $(cat "$pidf"))"; return; fi
  port_open "$BROKER_PORT" && die "port $BROKER_PORT (for the broker) is taken by another process; stop it or set DOCREPL_BROKER_PORT"
  [ -x "$NISSHI_BIN" ] || die "nisshi not installed: run scripts/setup.sh first"
  mkdir -p "$dir"
  # nisshi reads the sqlite path relative to its working directory, so it runs in $dir.
  local storage="sqlite://broker.db"
  [ "${DOCREPL_BROKER_STORAGE:-sqlite}" = memory ] && storage="memory://nisshi/"
  (cd "$dir" && exec nohup "$NISSHI_BIN" broker --listener-url "tcp://127.0.0.1:$BROKER_PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$BROKER_PORT" --storage-engine "$storage" \
    >>"$dir/broker.log" 2>&1 </dev/null) &
  echo $! >"$pidf"
  for _ in $(seq 1 100); do
    port_open "$BROKER_PORT" && { log "broker: 127.0.0.1:$BROKER_PORT ($storage, pid $(cat "$pidf"))"; return; }
    pid_alive "$pidf" || break
    sleep 0.2
  done
  die "broker did not start: see $dir/broker.log"
}

stop_pid() { # name pidfile
  local pidf=$2
  if ! pid_alive "$pidf"; then rm -f "$pidf"; log "$1 not running"; return; fi
  local pid; pid=$(cat "$pidf")
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -0 "$pid" 2>/dev/null && { log "$1 did not stop within 30 s, killing"; kill -KILL "$pid" 2>/dev/null || true; }
  rm -f "$pidf"
  log "$1 stopped"
}

status_one() { # name pidfile port
  if pid_alive "$2"; then echo "$1: running (pid $(cat "$2")) on 127.0.0.1:$3"; else echo "$1: stopped"; fi
}

start_one() {
  case "$1" in
    source) start_mongod source "$SOURCE_PORT" ;;
    target) start_mongod target "$TARGET_PORT" ;;
    broker) start_broker ;;
    *) usage ;;
  esac
}

stop_one() {
  case "$1" in
    source) stop_pid "source mongod" "$DOCREPL_DATA/source/mongod.pid" ;;
    target) stop_pid "target mongod" "$DOCREPL_DATA/target/mongod.pid" ;;
    broker) stop_pid broker "$DOCREPL_DATA/broker/nisshi.pid" ;;
    *) usage ;;
  esac
}

command="${1:-}"
[ $# -gt 0 ] && shift
case "$command" in
  start)
    if [ $# -eq 0 ]; then set -- source target broker; fi
    for c in "$@"; do start_one "$c"; done ;;
  stop)
    if [ $# -eq 0 ]; then set -- broker source target; fi
    for c in "$@"; do stop_one "$c"; done ;;
  status)
    status_one "source mongod" "$DOCREPL_DATA/source/mongod.pid" "$SOURCE_PORT"
    status_one "target mongod" "$DOCREPL_DATA/target/mongod.pid" "$TARGET_PORT"
    status_one broker "$DOCREPL_DATA/broker/nisshi.pid" "$BROKER_PORT" ;;
  *) usage ;;
esac
