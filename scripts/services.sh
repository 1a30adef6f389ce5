#!/usr/bin/env bash
# Starts, stops and reports the local services docrepl runs against, all on 127.0.0.1:
#   source mongod  (replica set rs-source)  port $DOCREPL_SOURCE_PORT (27117)
#   target mongod  (replica set rs-target)  port $DOCREPL_TARGET_PORT (27217)
#   Apache Kafka   (KRaft, DOCREPL_KAFKA_NODES nodes, default 1)  port $DOCREPL_BROKER_PORT (19092)
# Data, logs and pid files live under $DOCREPL_DATA (default .data/ in the checkout).
# `start` is idempotent; `stop` stops only what it started. `start`/`stop` take the
# components to act on (`source`, `target`, `broker`, or `broker:N` for one node of the
# cluster; default all), which the fault suite uses to restart one of them;
# `kafka-tool CLASS ARGS...` runs one of Kafka's tools against the cluster.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

usage() { echo "usage: $0 start|stop [source|target|broker|broker:N ...] | status | kafka-tool CLASS ARGS..." >&2; exit 2; }

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

# Apache Kafka in KRaft combined mode (each node broker and controller), loopback only.
# KAFKA_NODES=1 (the default) is the tests' and the demo's broker; 3 is a cluster with
# replication factor 3 and min.insync.replicas 2 for the fault tests. Node i listens for
# clients on BROKER_PORT + 10 * (i - 1) and for its controller on the port after.
# DOCREPL_BROKER_LINKS="LISTEN>ADVERTISED ..." adds to node 1 a listener per pair on port
# LISTEN that advertises 127.0.0.1:ADVERTISED, and to node i the same pair shifted by
# 10 * (i - 1): an emulated link from each node's ADVERTISED to its LISTEN puts every
# connection of a client that bootstraps through one of them across the link.
node_port() { echo $(( BROKER_PORT + 10 * ($1 - 1) )); }
node_dir() { echo "$DOCREPL_DATA/broker/node$1"; }

write_node_config() { # node cluster_size
  local node=$1 n=$2 port dir voters="" i rf isr
  port=$(node_port "$node"); dir=$(node_dir "$node")
  for i in $(seq 1 "$n"); do voters+="${voters:+,}$i@127.0.0.1:$(( $(node_port "$i") + 1 ))"; done
  rf=$(( n < 3 ? n : 3 )); isr=$(( rf > 1 ? 2 : 1 ))
  local listeners="PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$((port + 1))"
  local advertised="PLAINTEXT://127.0.0.1:$port" protocols="PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
  if [ -n "${DOCREPL_BROKER_LINKS:-}" ]; then
    local pair k=0 shift=$(( 10 * (node - 1) ))
    for pair in $DOCREPL_BROKER_LINKS; do
      k=$((k + 1))
      listeners+=",LINK$k://127.0.0.1:$(( ${pair%%>*} + shift ))"
      advertised+=",LINK$k://127.0.0.1:$(( ${pair##*>} + shift ))"
      protocols+=",LINK$k:PLAINTEXT"
    done
  fi
  # DOCREPL_KAFKA_TLS_DIR (a PKCS#12 keystore broker.p12, password in
  # DOCREPL_KAFKA_KEYSTORE_PASSWORD): a SASL_SSL listener (SCRAM-SHA-512) on the node's
  # port + 6, with Kafka's StandardAuthorizer; the plaintext listeners stay for the
  # controllers and for setting ACLs (their ANONYMOUS principal is a super user).
  local secure=""
  if [ -n "${DOCREPL_KAFKA_TLS_DIR:-}" ]; then
    listeners+=",SECURE://127.0.0.1:$((port + 6))"
    advertised+=",SECURE://127.0.0.1:$((port + 6))"
    protocols+=",SECURE:SASL_SSL"
    secure="sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.secure.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.secure.ssl.keystore.type=PKCS12
listener.name.secure.ssl.keystore.location=$DOCREPL_KAFKA_TLS_DIR/broker.p12
listener.name.secure.ssl.keystore.password=${DOCREPL_KAFKA_KEYSTORE_PASSWORD:-}
listener.name.secure.ssl.key.password=${DOCREPL_KAFKA_KEYSTORE_PASSWORD:-}
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:ANONYMOUS"
  fi
  # DOCREPL_KAFKA_IAM_JAAS (with DOCREPL_KAFKA_TLS_DIR): a SASL_SSL listener taking
  # OAUTHBEARER tokens on the node's port + 7, checked by the class
  # DOCREPL_KAFKA_IAM_VALIDATOR (on DOCREPL_KAFKA_EXTRA_CLASSPATH) configured with these
  # JAAS options (the broker's own login, which no client sees, is Kafka's unsecured
  # one): tests/msk_iam.rs's stand-in for MSK's IAM listener. Sessions must
  # re-authenticate within their token's life, as on MSK (KIP-368).
  if [ -n "${DOCREPL_KAFKA_IAM_JAAS:-}" ] && [ -n "${DOCREPL_KAFKA_TLS_DIR:-}" ]; then
    listeners+=",IAM://127.0.0.1:$((port + 7))"
    advertised+=",IAM://127.0.0.1:$((port + 7))"
    protocols+=",IAM:SASL_SSL"
    secure="$secure
listener.name.iam.sasl.enabled.mechanisms=OAUTHBEARER
listener.name.iam.oauthbearer.sasl.jaas.config=org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required unsecuredLoginStringClaim_sub="broker" $DOCREPL_KAFKA_IAM_JAAS;
listener.name.iam.oauthbearer.sasl.server.callback.handler.class=${DOCREPL_KAFKA_IAM_VALIDATOR:?set DOCREPL_KAFKA_IAM_VALIDATOR}
listener.name.iam.oauthbearer.connections.max.reauth.ms=${DOCREPL_KAFKA_IAM_REAUTH_MS:-900000}
listener.name.iam.ssl.keystore.type=PKCS12
listener.name.iam.ssl.keystore.location=$DOCREPL_KAFKA_TLS_DIR/broker.p12
listener.name.iam.ssl.keystore.password=${DOCREPL_KAFKA_KEYSTORE_PASSWORD:-}
listener.name.iam.ssl.key.password=${DOCREPL_KAFKA_KEYSTORE_PASSWORD:-}"
    secure="${secure/super.users=User:ANONYMOUS/super.users=User:ANONYMOUS${DOCREPL_KAFKA_IAM_SUPER_USERS:+;$DOCREPL_KAFKA_IAM_SUPER_USERS}}"
  fi
  # DOCREPL_KAFKA_CREATE_TOPIC_POLICY: a CreateTopicPolicy class (on
  # DOCREPL_KAFKA_EXTRA_CLASSPATH) that judges every CreateTopics, as a managed cluster's.
  if [ -n "${DOCREPL_KAFKA_CREATE_TOPIC_POLICY:-}" ]; then
    secure="$secure
create.topic.policy.class.name=$DOCREPL_KAFKA_CREATE_TOPIC_POLICY"
  fi
  cat >"$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=$node
controller.quorum.voters=$voters
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listeners=$listeners
advertised.listeners=$advertised
listener.security.protocol.map=$protocols
log.dirs=$dir/data
# docrepl creates its topics itself (as on MSK, where auto-creation is off by default).
auto.create.topics.enable=false
num.partitions=1
default.replication.factor=$rf
min.insync.replicas=$isr
offsets.topic.replication.factor=$rf
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$isr
# As Kafka's own sample config for development: a group forms at once, not after 3 s.
group.initial.rebalance.delay.ms=0
$secure
PROPS
}

write_log_config() { # dir
  cat >"$1/log4j2.properties" <<'PROPS'
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.out.ref = out
logger.kafka.name = kafka
logger.kafka.level = warn
logger.kafkaapache.name = org.apache.kafka
logger.kafkaapache.level = warn
logger.started.name = kafka.server.KafkaRaftServer
logger.started.level = info
PROPS
}

java_bin() { if [ -n "${JAVA_HOME:-}" ]; then echo "$JAVA_HOME/bin/java"; else echo java; fi; }

kafka_java() { # main-class args... (one of Kafka's tools, with the cached jars)
  # The extra class path too: formatting the log dir loads the classes the config names.
  "$(java_bin)" -Dlog4j2.configurationFile="$DOCREPL_DATA/broker/log4j2.properties" -cp "$KAFKA_LIBS/*${DOCREPL_KAFKA_EXTRA_CLASSPATH:+:$DOCREPL_KAFKA_EXTRA_CLASSPATH}" "$@"
}

start_broker_node() { # node cluster_size
  local node=$1 n=$2 port dir pidf
  port=$(node_port "$node"); dir=$(node_dir "$node"); pidf="$dir/kafka.pid"
  if pid_alive "$pidf"; then log "broker $node already running on 127.0.0.1:$port (pid $(cat "$pidf"))"; return; fi
  port_open "$port" && die "port $port (for broker $node) is taken by another process; stop it or set DOCREPL_BROKER_PORT"
  port_open $((port + 1)) && die "port $((port + 1)) (for broker $node's controller) is taken by another process; stop it or set DOCREPL_BROKER_PORT"
  mkdir -p "$dir"
  write_node_config "$node" "$n"
  if [ ! -f "$dir/data/meta.properties" ]; then
    # DOCREPL_KAFKA_SCRAM_USERS="name:password ...": SCRAM-SHA-512 credentials written
    # with the cluster's first metadata.
    local scram=() user
    for user in ${DOCREPL_KAFKA_SCRAM_USERS:-}; do
      scram+=(--add-scram "SCRAM-SHA-512=[name=${user%%:*},password=${user#*:}]")
    done
    kafka_java kafka.tools.StorageTool format --ignore-formatted -t "$(cat "$DOCREPL_DATA/broker/cluster.id")" \
      -c "$dir/server.properties" "${scram[@]}" >>"$dir/broker.log" 2>&1 || die "formatting broker $node's log dir failed: see $dir/broker.log"
  fi
  # A heap of 512 MB-1 GB per node: enough for the tests and benches on a 24 GiB machine.
  # exec, not kafka_java: the pid recorded below must be the JVM's, so that a stop or a
  # kill -9 reaches the broker itself.
  (exec nohup "$(java_bin)" -Xms512m -Xmx"${DOCREPL_KAFKA_HEAP:-1g}" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -Djava.awt.headless=true -Dlog4j2.configurationFile="$DOCREPL_DATA/broker/log4j2.properties" \
    -cp "$KAFKA_LIBS/*${DOCREPL_KAFKA_EXTRA_CLASSPATH:+:$DOCREPL_KAFKA_EXTRA_CLASSPATH}" kafka.Kafka "$dir/server.properties" >>"$dir/broker.log" 2>&1 </dev/null) &
  echo $! >"$pidf"
}

start_broker() {
  [ -f "$KAFKA_LIBS/kafka_2.13-$KAFKA_VERSION.jar" ] || die "Apache Kafka not installed: run scripts/setup.sh first"
  mkdir -p "$DOCREPL_DATA/broker"
  write_log_config "$DOCREPL_DATA/broker"
  [ -f "$DOCREPL_DATA/broker/cluster.id" ] || kafka_java kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n1 >"$DOCREPL_DATA/broker/cluster.id"
  local nodes=("$@") i
  [ ${#nodes[@]} -eq 0 ] && nodes=($(seq 1 "$KAFKA_NODES"))
  for i in "${nodes[@]}"; do start_broker_node "$i" "$KAFKA_NODES"; done
  for i in "${nodes[@]}"; do wait_broker_node "$i"; done
}

# wait_broker_node NODE: until the node takes clients (its port open and its log saying
# the server started), bounded by 90 s.
wait_broker_node() {
  local node=$1 port dir
  port=$(node_port "$node"); dir=$(node_dir "$node")
  for _ in $(seq 1 450); do
    if port_open "$port" && grep -q "Kafka Server started" "$dir/broker.log" 2>/dev/null; then
      log "broker $node: Apache Kafka $KAFKA_VERSION on 127.0.0.1:$port (KRaft, pid $(cat "$dir/kafka.pid"))"
      return
    fi
    pid_alive "$dir/kafka.pid" || break
    sleep 0.2
  done
  die "broker $node did not start: see $dir/broker.log"
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

# stop_broker: every node at once (stopped one by one, the last ones would wait for a
# controller quorum that has already gone).
stop_broker() {
  local i
  for i in $(seq 1 "$KAFKA_NODES"); do
    pid_alive "$(node_dir "$i")/kafka.pid" && { kill -TERM "$(cat "$(node_dir "$i")/kafka.pid")" 2>/dev/null || true; }
  done
  for i in $(seq 1 "$KAFKA_NODES"); do stop_pid "broker $i" "$(node_dir "$i")/kafka.pid"; done
}

status_one() { # name pidfile port
  if pid_alive "$2"; then echo "$1: running (pid $(cat "$2")) on 127.0.0.1:$3"; else echo "$1: stopped"; fi
}

start_one() {
  case "$1" in
    source) start_mongod source "$SOURCE_PORT" ;;
    target) start_mongod target "$TARGET_PORT" ;;
    broker) start_broker ;;
    broker:[0-9]*) start_broker "${1#broker:}" ;;
    *) usage ;;
  esac
}

stop_one() {
  case "$1" in
    source) stop_pid "source mongod" "$DOCREPL_DATA/source/mongod.pid" ;;
    target) stop_pid "target mongod" "$DOCREPL_DATA/target/mongod.pid" ;;
    broker) stop_broker ;;
    broker:[0-9]*) stop_pid "broker ${1#broker:}" "$(node_dir "${1#broker:}")/kafka.pid" ;;
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
  kafka-tool)
    # One of Kafka's own tools (e.g. org.apache.kafka.tools.TopicCommand) against the
    # running cluster, for the fault suite's partition reassignment.
    [ $# -gt 0 ] || usage
    bootstrap=""
    for i in $(seq 1 "$KAFKA_NODES"); do bootstrap+="${bootstrap:+,}127.0.0.1:$(node_port "$i")"; done
    tool=$1; shift
    kafka_java "$tool" --bootstrap-server "$bootstrap" "$@" ;;
  status)
    status_one "source mongod" "$DOCREPL_DATA/source/mongod.pid" "$SOURCE_PORT"
    status_one "target mongod" "$DOCREPL_DATA/target/mongod.pid" "$TARGET_PORT"
    for i in $(seq 1 "$KAFKA_NODES"); do
      if [ "$KAFKA_NODES" = 1 ]; then name=broker; else name="broker $i"; fi
      status_one "$name" "$(node_dir "$i")/kafka.pid" "$(node_port "$i")"
    done ;;
  *) usage ;;
esac
