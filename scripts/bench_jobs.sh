# The job-for-job phase of scripts/bench.sh (sourced by it, never run): the three jobs
# users compare replicators on, each run by docrepl and by the pipeline people build today
# on Kafka Connect (Debezium's MongoDB source connector, the MongoDB Kafka sink connector),
# on the same services, the same data and the same broker, in one run:
#   initial copy       N documents already in bench.copy, copied through a fresh topic
#                      until the target holds them all
#   catch-up, inserts  each tool saved its change-stream position on the empty
#                      bench.catchup and was stopped; N inserts arrive; it starts again:
#                      until the target holds all N
#   catch-up, updates  stopped again; N / 10 updates (`$inc`, one per document, the first
#                      N / 10 `_id`s) and then JOB_MARKERS marker inserts arrive; it starts
#                      again: until every marker is on the target (each partition's updates
#                      are behind its markers)
# beside a same-run ceiling: loadgen straight into the target.
# docrepl runs as the pair users deploy, `docrepl source` and `docrepl sink` in two
# processes started together for each job, both measured from their start (peak RSS, CPU).
# The peer runs in one Kafka Connect worker (standalone, started once before the jobs, as a
# Connect cluster runs all the time): its connectors are created, stopped and resumed
# through its REST API, and its CPU is counted only while a job runs (its JVM start is left
# out; its peak RSS is reset before each job through /proc/PID/clear_refs). Either way both
# tools get 8 partitions per topic, lz4 and the broker's CPU shown apart.
# The peer's connectors are those published on Maven Central (KC_DEBEZIUM_VERSION,
# KC_MONGO_SINK_VERSION), fetched once into $DOCREPL_CACHE; the Connect worker is Kafka
# $KAFKA_VERSION's (scripts/kafka-connect/pom.xml). JOB_PEER=0 leaves the peer out.
# Each docrepl job ends with `docrepl verify` (equal); each peer job with its counts.
# Tuning experiments: KAFKA_PROPERTIES and KAFKA_COMPRESSION as in scripts/bench_link.sh,
# JOB_SOURCE_EXTRA for more [source] lines (e.g. `capture_mode = "change_streams"`); all
# docrepl's side only.

KC_DEBEZIUM_VERSION="${KC_DEBEZIUM_VERSION:-3.6.1.Final}"
KC_MONGO_SINK_VERSION="${KC_MONGO_SINK_VERSION:-2.0.1}"
KC_HOME="$DOCREPL_CACHE/kafka-connect-$KAFKA_VERSION"
KC_PORT=18290
JOB_MARKERS="${JOB_MARKERS:-128}"
JOB_PEER="${JOB_PEER:-1}"
# Marker `_id`s start above every loadgen document.
MARKER_BASE=4000000000

# fetch_kafka_connect: the worker's jars into $KC_HOME/runtime, the two connectors as their
# projects publish them (Debezium's plugin archive, the sink's jar with its dependencies)
# into $KC_HOME/plugins; skipped when present.
fetch_kafka_connect() {
  local stamp="$KC_HOME/plugins/.debezium-$KC_DEBEZIUM_VERSION-mongo-$KC_MONGO_SINK_VERSION"
  [ -f "$stamp" ] && [ -f "$KC_HOME/runtime/connect-runtime-$KAFKA_VERSION.jar" ] && return
  log "fetching Kafka Connect $KAFKA_VERSION, Debezium MongoDB $KC_DEBEZIUM_VERSION and the MongoDB sink connector $KC_MONGO_SINK_VERSION with Maven into $KC_HOME"
  local tmp pom="$DOCREPL_ROOT/scripts/kafka-connect/pom.xml" mlog="$DOCREPL_CACHE/logs/kafka-connect-fetch.log"
  tmp="$(mktemp -d)"
  { mvn -q -B -f "$pom" -Dkafka.version="$KAFKA_VERSION" dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp/runtime" &&
    mvn -q -B -f "$pom" dependency:copy -Dartifact="io.debezium:debezium-connector-mongodb:$KC_DEBEZIUM_VERSION:tar.gz:plugin" -DoutputDirectory="$tmp/dl" &&
    mvn -q -B -f "$pom" dependency:copy -Dartifact="org.mongodb.kafka:mongo-kafka-connect:$KC_MONGO_SINK_VERSION:jar:all" -DoutputDirectory="$tmp/dl"
  } >"$mlog" 2>&1 || die "fetching Kafka Connect or a connector from Maven Central failed (Debezium $KC_DEBEZIUM_VERSION, MongoDB sink $KC_MONGO_SINK_VERSION): see $mlog, or run with JOB_PEER=0"
  mkdir -p "$tmp/plugins/mongo-kafka-connect"
  tar -xzf "$tmp/dl/debezium-connector-mongodb-$KC_DEBEZIUM_VERSION-plugin.tar.gz" -C "$tmp/plugins"
  cp "$tmp/dl/mongo-kafka-connect-$KC_MONGO_SINK_VERSION-all.jar" "$tmp/plugins/mongo-kafka-connect/"
  touch "$tmp/plugins/.debezium-$KC_DEBEZIUM_VERSION-mongo-$KC_MONGO_SINK_VERSION"
  rm -rf "$KC_HOME" && mkdir -p "$KC_HOME"
  mv "$tmp/runtime" "$tmp/plugins" "$KC_HOME/"
  rm -rf "$tmp"
}

# start_kafka_connect: one standalone worker with no connectors, its REST API on KC_PORT;
# its pid in KC_PID.
start_kafka_connect() {
  cat >"$WORK/connect.properties" <<EOF
bootstrap.servers=127.0.0.1:$BROKER_PORT
listeners=http://127.0.0.1:$KC_PORT
plugin.path=$KC_HOME/plugins
offset.storage.file.filename=$WORK/connect.offsets
offset.flush.interval.ms=1000
key.converter=org.apache.kafka.connect.json.JsonConverter
value.converter=org.apache.kafka.connect.json.JsonConverter
key.converter.schemas.enable=false
value.converter.schemas.enable=false
producer.compression.type=lz4
producer.linger.ms=5
producer.batch.size=1048576
consumer.max.poll.records=2000
EOF
  cat >"$WORK/connect-log4j2.properties" <<'EOF'
rootLogger.level = WARN
rootLogger.appenderRef.stdout.ref = STDOUT
appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = [%d] %p %m (%c)%n
EOF
  (exec java -Xms512m -Xmx1g -XX:+UseG1GC -Dlog4j2.configurationFile="$WORK/connect-log4j2.properties" \
    -cp "$KC_HOME/runtime/*" org.apache.kafka.connect.cli.ConnectStandalone "$WORK/connect.properties" \
    >"$WORK/connect.log" 2>&1 </dev/null) &
  KC_PID=$!
  OWN_PIDS+=("$KC_PID")
  wait_for curl -sf "http://127.0.0.1:$KC_PORT/connectors" -o /dev/null
}

# kc METHOD PATH [JSON]: one call to the worker's REST API; fails on an error status.
kc() {
  curl -sf -X "$1" -H 'Content-Type: application/json' ${3:+--data "$3"} "http://127.0.0.1:$KC_PORT$2" >/dev/null \
    || die "Kafka Connect: $1 $2 failed: see $WORK/connect.log"
}
kc_running() { curl -sf "http://127.0.0.1:$KC_PORT/connectors/$1/status" | grep -q '"tasks":\[{.*"state":"RUNNING"'; }

# kc_pair NAME COLLECTION SNAPSHOT: creates the source connector NAME (Debezium over
# bench.COLLECTION, snapshot.mode SNAPSHOT) and NAME-sink (into peer.COLLECTION on the
# target), the settings a user of both would choose for this job.
kc_pair() {
  kc PUT "/connectors/$1/config" "{
    \"connector.class\": \"io.debezium.connector.mongodb.MongoDbConnector\",
    \"mongodb.connection.string\": \"mongodb://127.0.0.1:$SOURCE_PORT/?replicaSet=rs-source\",
    \"topic.prefix\": \"$1\", \"collection.include.list\": \"bench.$2\",
    \"capture.mode\": \"change_streams_update_full\", \"snapshot.mode\": \"$3\",
    \"heartbeat.interval.ms\": \"1000\", \"tasks.max\": \"1\",
    \"max.batch.size\": \"8192\", \"max.queue.size\": \"32768\"}"
  kc PUT "/connectors/$1-sink/config" "{
    \"connector.class\": \"com.mongodb.kafka.connect.MongoSinkConnector\",
    \"connection.uri\": \"mongodb://127.0.0.1:$TARGET_PORT/?replicaSet=rs-target\",
    \"topics\": \"$1.bench.$2\", \"database\": \"peer\", \"collection\": \"$2\",
    \"change.data.capture.handler\": \"com.mongodb.kafka.connect.sink.cdc.debezium.mongodb.ChangeStreamHandler\",
    \"tasks.max\": \"8\", \"max.batch.size\": \"0\"}"
}
# kc_topic NAME PARTITIONS: the broker creates no topic by itself (as on MSK by default).
kc_topic() { "$DOCREPL_ROOT/scripts/services.sh" kafka-tool org.apache.kafka.tools.TopicCommand --create --if-not-exists --topic "$1" --partitions "$2" >/dev/null; }

# job_config PREFIX COLLECTION SIDE: docrepl's config for a job (SIDE source|sink: its own
# status port).
job_config() {
  local http=18281; [ "$3" = sink ] && http=18282
  bench_config "$WORK/job-$1-$3.toml" bench "$2" "$1" "g-$1" "127.0.0.1:$BROKER_PORT" 8 "$http" "${JOB_SOURCE_EXTRA:-}"
  echo "$WORK/job-$1-$3.toml"
}

cpu_of() { read -r _ c < <(proc_stats "$1"); echo "$c"; }
# services_cpu: CPU seconds so far of the broker, the source mongod and the target mongod;
# services_delta BEFORE: what they spent since BEFORE (the three, space-separated).
services_cpu() { echo "$(cpu_of "$(cat "$DOCREPL_DATA/broker/node1/kafka.pid")") $(cpu_of "$(cat "$DOCREPL_DATA/source/mongod.pid")") $(cpu_of "$(cat "$DOCREPL_DATA/target/mongod.pid")")"; }
services_delta() { python3 -c "import sys; a, b = sys.argv[1].split(), sys.argv[2].split(); print(' '.join(f'{float(y) - float(x):.1f}' for x, y in zip(a, b)))" "$1" "$(services_cpu)"; }
reset_peak_rss() { echo 5 >"/proc/$1/clear_refs" 2>/dev/null || true; }
# wait_job COLLECTION N [MIN_ID] (database DB_ON_TARGET): "first_write done" times.
wait_job() { "$PY" "$DOCREPL_ROOT/scripts/job_wait.py" "$TARGET_PORT" "${DB_ON_TARGET:-bench}" "$@" || die "job did not finish: $*"; }

# docrepl_job NAME PREFIX COLLECTION N [MIN_ID]: starts docrepl source and sink, waits
# for the job's end, verifies, stops both; its row in JOB_ROWS and JOB_JSON.
docrepl_job() {
  local name=$1 prefix=$2 coll=$3 n=$4 min_id=${5:-} src snk b0 t0 times first done s_rss s_cpu k_rss k_cpu b1
  local scfg kcfg
  scfg=$(job_config "$prefix" "$coll" source); kcfg=$(job_config "$prefix" "$coll" sink)
  b0=$(services_cpu)
  t0=$(now)
  "$BIN" source --config "$scfg" 2>>"$WORK/job-$prefix-source.log" & src=$!
  "$BIN" sink --config "$kcfg" 2>>"$WORK/job-$prefix-sink.log" & snk=$!
  OWN_PIDS+=("$src" "$snk")
  local perfs=()
  if [ -n "${JOB_PERF:-}" ]; then # profiles of both processes: $WORK/perf-PREFIX-JOB-SIDE.data
    perf record -q -F 499 -g -p "$src" -o "$WORK/perf-$prefix-${name##* }-source.data" 2>/dev/null & perfs+=($!)
    perf record -q -F 499 -g -p "$snk" -o "$WORK/perf-$prefix-${name##* }-sink.data" 2>/dev/null & perfs+=($!)
  fi
  times=$(wait_job "$coll" "$n" "${min_id:--}")
  local p; for p in "${perfs[@]}"; do kill -INT "$p"; wait "$p" || true; done
  read -r first done <<<"$times"
  read -r s_rss s_cpu < <(proc_stats "$src"); read -r k_rss k_cpu < <(proc_stats "$snk")
  b1=$(services_delta "$b0")
  "$BIN" verify --config "$kcfg" --collection "$coll" --wait-for-quiet 60 >"$WORK/verify-$prefix-$name.txt" \
    || die "docrepl $name: verify: $(cat "$WORK/verify-$prefix-$name.txt")"
  stop_pid "$src"; stop_pid "$snk"
  job_row "$name" docrepl "$t0" "$first" "$done" "$s_cpu + $k_cpu" "source $s_cpu, sink $k_cpu" "$b1" "source $s_rss, sink $k_rss" "$s_rss $k_rss"
}

# peer_job NAME CONNECTOR COLLECTION N [MIN_ID]: resumes (or has just created) the peer's
# connectors, waits for the job's end, stops them; its row in JOB_ROWS and JOB_JSON.
peer_job() {
  local name=$1 conn=$2 coll=$3 n=$4 min_id=${5:-} b0 c0 t0 times first done c1 b1 rss
  reset_peak_rss "$KC_PID"
  b0=$(services_cpu); c0=$(cpu_of "$KC_PID")
  t0=$(now)
  if [ -n "${PEER_CREATE:-}" ]; then kc_pair "$conn" "$coll" "$PEER_CREATE"; else kc PUT "/connectors/$conn/resume"; kc PUT "/connectors/$conn-sink/resume"; fi
  times=$(DB_ON_TARGET=peer wait_job "$coll" "$n" "${min_id:--}")
  read -r first done <<<"$times"
  c1=$(cpu_of "$KC_PID"); b1=$(services_delta "$b0")
  read -r rss _ < <(proc_stats "$KC_PID")
  kc PUT "/connectors/$conn/stop"; kc PUT "/connectors/$conn-sink/stop"
  local cpu; cpu=$(python3 -c "print(round($c1 - $c0, 1))")
  job_row "$name" "Kafka Connect" "$t0" "$first" "$done" "$cpu" "worker $cpu" "$b1" "worker $rss" "$rss"
}

# job_row JOB TOOL T0 FIRST DONE CPU_SUM CPU_TEXT SERVICES_CPU RSS_TEXT RSS_LIST: appends a
# Markdown row and a JSON object for the job.
JOB_ROWS=() JOB_JSON=()
job_row() {
  local job=$1 tool=$2 t0=$3 first=$4 done=$5 cpu_sum=$6 cpu_text=$7 rss_text=$9 rss_list=${10} bcpu scpu tcpu
  read -r bcpu scpu tcpu <<<"$8"
  local n secs rate ratio first_s
  case "$job" in "catch-up, updates") n=$((N / 10)) ;; *) n=$N ;; esac
  secs=$(python3 -c "print(f'{$done - $t0:.1f}')")
  rate=$(python3 -c "print(round($n / ($done - $t0)))")
  ratio=$(python3 -c "print(f'{$rate / $JOB_CEILING:.3f}')")
  # The updates' first change on the target is not watched: only their markers are.
  first_s=$(python3 -c "print(f'{$first - $t0:.1f}')"); [ "$job" = "catch-up, updates" ] && first_s="-"
  # "source 8.6, sink 8.5" (CPU seconds) -> the same per million documents.
  each_per_million() { python3 -c "import re; print(', '.join(f'{w} {float(c) * 1e6 / $n:.1f}' if w else f'{float(c) * 1e6 / $n:.1f}' for w, c in re.findall(r'([a-z]*) ?([0-9.]+)', '''$1''')))"; }
  local cpu_m total_m broker_m
  cpu_m=$(each_per_million "$cpu_text"); total_m=$(python3 -c "print(f'{($cpu_sum) * 1e6 / $n:.1f}')"); broker_m=$(python3 -c "print(f'{$bcpu * 1e6 / $n:.1f}')")
  local mongod_m; mongod_m=$(python3 -c "print(f'{$scpu * 1e6 / $n:.1f} / {$tcpu * 1e6 / $n:.1f}')")
  log "$job, $tool: $rate docs/s ($secs s; $ratio of the ceiling), first write after $first_s s, CPU-s per million $total_m ($cpu_m; broker $broker_m; mongod source / target $mongod_m), peak RSS MB $rss_text"
  JOB_ROWS+=("| $job | $tool | $rate | $ratio | $secs | $first_s | $total_m ($cpu_m) | $broker_m | $mongod_m | $rss_text |")
  JOB_JSON+=("{\"job\": \"$job\", \"tool\": \"$tool\", \"documents\": $n, \"docs_per_s\": $rate, \"over_ceiling\": $ratio, \"seconds\": $secs, \"first_write_s\": ${first_s/#-/null}, \"cpu_s_per_million\": $total_m, \"cpu_s_per_million_by_process\": \"$cpu_m\", \"broker_cpu_s_per_million\": $broker_m, \"mongod_cpu_s_per_million_source_target\": [${mongod_m/ \/ /,}], \"peak_rss_mb\": [$(echo "$rss_list" | tr ' ' ',')]}")
}

jobs_phases() {
  log "jobs: the same-run ceiling, $N documents straight into the target"
  local cfg; cfg=$(job_config jceiling ceiling sink)
  JOB_CEILING=$("$BIN" loadgen --config "$cfg" --target --collection jceiling -n "$N" --database bench | sed -E 's/.* = ([0-9]+) docs\/s.*/\1/')
  log "jobs: ceiling $JOB_CEILING docs/s; $N documents into bench.copy"
  "$BIN" loadgen --config "$cfg" --collection copy -n "$N" --database bench >/dev/null
  "$PY" -c "from pymongo import MongoClient; MongoClient('127.0.0.1', $SOURCE_PORT, directConnection=True)['bench'].create_collection('catchup')"
  if [ "$JOB_PEER" = 1 ]; then
    fetch_kafka_connect
    start_kafka_connect
    local t
    for t in kcc kck; do kc_topic "__debezium-heartbeat.$t" 1; done
    kc_topic kcc.bench.copy 8; kc_topic kck.bench.catchup 8
  fi

  log "jobs: each tool saves its change-stream position on the empty bench.catchup, then stops"
  local src scfg; scfg=$(job_config jk catchup source)
  "$BIN" source --config "$scfg" 2>>"$WORK/job-jk-source.log" & src=$!
  wait_for grep -q "streaming changes" "$WORK/job-jk-source.log"
  sleep 2; stop_pid "$src"
  if [ "$JOB_PEER" = 1 ]; then
    kc_pair kck catchup no_data
    wait_for kc_running kck
    sleep 5 # two heartbeats and an offset flush: Debezium's position is saved
    kc PUT /connectors/kck/stop; kc PUT /connectors/kck-sink/stop
  fi
  "$BIN" loadgen --config "$cfg" --collection catchup -n "$N" --database bench --append >/dev/null

  log "jobs 1/3: initial copy of $N documents"
  docrepl_job "initial copy" jc copy "$N"
  [ "$JOB_PEER" = 1 ] && PEER_CREATE=initial peer_job "initial copy" kcc copy "$N"
  log "jobs 2/3: change-stream catch-up of $N inserts"
  docrepl_job "catch-up, inserts" jk catchup "$N"
  [ "$JOB_PEER" = 1 ] && peer_job "catch-up, inserts" kck catchup "$N"
  log "jobs 3/3: catch-up of $((N / 10)) updates"
  "$PY" - "$SOURCE_PORT" "$N" "$JOB_MARKERS" "$MARKER_BASE" <<'EOF'
import sys
from pymongo import MongoClient
port, n, markers, base = (int(a) for a in sys.argv[1:])
c = MongoClient("127.0.0.1", port, directConnection=True)["bench"]["catchup"]
first = c.find_one(sort=[("_id", 1)])["_id"]
r = c.update_many({"_id": {"$gte": first, "$lt": first + n // 10}}, {"$inc": {"v": 1}})
assert r.modified_count == n // 10, r.modified_count
c.insert_many([{"_id": base + i, "marker": True} for i in range(markers)])
EOF
  docrepl_job "catch-up, updates" jk catchup "$JOB_MARKERS" "$MARKER_BASE"
  [ "$JOB_PEER" = 1 ] && peer_job "catch-up, updates" kck catchup "$JOB_MARKERS" "$MARKER_BASE"
  if [ "$JOB_PEER" = 1 ]; then
    local peer_count; peer_count=$(count_docs "$TARGET_PORT" peer catchup '{"v": 1}')
    [ "$peer_count" = $((N / 10)) ] || die "the peer's catch-up of updates left $peer_count of $((N / 10)) updated documents on the target"
    stop_pid "$KC_PID"
  fi

  cat <<EOF
Job for job, N = $N flat documents (int64 \`_id\`s), $(nproc) cores, mongod $MONGOD_VERSION x2, Apache Kafka $KAFKA_VERSION (1 broker), 8 partitions, lz4, all on loopback; same-run ceiling (loadgen into the target) $JOB_CEILING docs/s. docrepl: \`docrepl source\` + \`docrepl sink\`, two processes${JOB_SOURCE_EXTRA:+, with \`$JOB_SOURCE_EXTRA\`}.$([ "$JOB_PEER" = 1 ] && echo " Kafka Connect $KAFKA_VERSION: Debezium MongoDB $KC_DEBEZIUM_VERSION + MongoDB sink connector $KC_MONGO_SINK_VERSION in one standalone worker.") Times from start to the last document on the target; CPU and RSS of the processes named (the worker's only while the job ran), the broker's and the two mongods' apart.

| job | tool | docs/s | / ceiling | s | first write (s) | CPU-s per million | broker CPU-s per million | mongod CPU-s per million: source / target | peak RSS MB |
|---|---|---|---|---|---|---|---|---|---|
EOF
  printf '%s\n' "${JOB_ROWS[@]}"
  local IFS=,
  echo "{\"n\": $N, \"ceiling_docs_per_s\": $JOB_CEILING, \"jobs\": [${JOB_JSON[*]}]}" >"${md%.md}-jobs.json"
}
