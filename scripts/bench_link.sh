# The cross-region phases of scripts/bench.sh (sourced by it, never run): each job of the
# local phases again, with an emulated WAN link between the regions, one row per job and
# link setting, all in one run on the same services:
#   catch-up, inserts  the source saved its position on an empty collection, LINK_N inserts
#                      arrive while it is stopped, then source and sink start together:
#                      until the target holds them all (then verify equal)
#   catch-up, mixed    the same for LINK_N / 2 changes (LINK_MIX, default 20:50:10:20:
#                      inserts:updates:deletes:replaces; 0:100:0:0 for updates only) over
#                      LINK_N / 10 hot documents and new ones,
#                      ended by 128 marker inserts: until every marker is on the target
#                      (each partition's last change is behind its markers), then verify
#   initial copy       a fresh topic prefix over the LINK_N-document collection: the copy
#                      through the topic until the target holds it all (then verify)
#   live               5,000 docs/s for LIVE_SECS: end-to-end lag of marker documents
#                      (source write acknowledged -> visible on the target)
#   catch-up, text     the inserts' catch-up for LINK_TEXT_N (LINK_N / 4) documents of
#                      ~4 KB random text (`loadgen --shape text`), which compression
#                      hardly shrinks: at 100 Mbit/s the link, not the CPU, is the limit,
#                      so the row says how much of the link the pipeline uses
# Between the regions runs `docrepl link` (one-way delay, bandwidth cap per direction).
# Placement A: the broker in the target region (the source produces across the link);
# B: in the source region (the sink consumes across it). The side across reaches the
# broker through its listener that advertises the link's near end (scripts/services.sh,
# DOCREPL_BROKER_LINKS), so every broker connection crosses the link; the side next to the
# broker uses its plain listener.
# Settings: LINK_SETTINGS="A:0:1000 A:75:100 ..." (placement:one-way delay ms:Mbit/s);
# LINK_JOBS="inserts mixed copy live text" (default: all; copy needs inserts);
# LINK_PARTITIONS (default 8) per topic.
# Tuning experiments: KAFKA_PROPERTIES="linger.ms = \"20\"" (TOML lines of
# [kafka.properties], both processes) and KAFKA_COMPRESSION (lz4, zstd, ...).

LINK_N="${LINK_N:-200000}"
LIVE_SECS="${LIVE_SECS:-60}"
LINK_SETTINGS="${LINK_SETTINGS:-A:0:1000 A:25:1000 A:75:1000 A:75:100 B:0:1000 B:25:1000 B:75:1000 B:75:100}"
# The broker's first link listener (lib.sh's default: BROKER_PORT + 3, advertising + 2).
LINK_PORT=$((BROKER_PORT + 2)) KAFKA_LINK_LISTENER=$((BROKER_PORT + 3)) LINK_CONTROL=$((BROKER_PORT + 7))
LINK_JOBS="${LINK_JOBS:-inserts mixed copy live text}"
LINK_TEXT_N="${LINK_TEXT_N:-$((LINK_N / 4))}"
LINK_MIX="${LINK_MIX:-20:50:10:20}"
LINK_PARTITIONS="${LINK_PARTITIONS:-8}"
LINK_ROWS=()
job_wanted() { case " $LINK_JOBS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

# link_config NAME COLLECTION: NAME-source.toml and NAME-sink.toml in $WORK, each side
# with its way to the broker for the current placement.
link_config() {
  local side bootstrap http
  for side in source sink; do
    if [ "$side" = source ]; then http=18211; else http=18212; fi
    bootstrap=$(bootstrap_for "$side" "$PLACEMENT")
    bench_config "$WORK/$1-$side.toml" wan "$2" "p-$1" "g-$1" "$bootstrap" "$LINK_PARTITIONS" "$http"
  done
}

link_bytes() { curl -sf "http://127.0.0.1:$LINK_CONTROL/stats" | python3 -c "import json,sys; s=json.load(sys.stdin); print(s['bytes_up'], s['bytes_down'])"; }
# sample_link FILE: "time bytes_up bytes_down" every 0.25 s into FILE until killed (the
# job's transfer rate, start-up left out: see `measured`); sampling NAME starts it for a
# job into $WORK/NAME-link.txt (its pid in SAMPLER).
sample_link() { : >"$1"; while sleep 0.25; do echo "$(now) $(link_bytes)" >>"$1"; done; }
sampling() { sample_link "$WORK/$1-link.txt" & SAMPLER=$!; OWN_PIDS+=("$SAMPLER"); }
create_collection() { "$PY" -c "from pymongo import MongoClient; MongoClient('127.0.0.1', $SOURCE_PORT, directConnection=True)['wan'].create_collection('$1')"; }
target_has() { [ "$(count_docs "$TARGET_PORT" wan "$1" "${3:-{\}}")" -ge "$2" ]; }

# start_pair NAME: source and sink of NAME started; their pids in SRC and SNK.
start_pair() {
  "$BIN" source --config "$WORK/$1-source.toml" 2>>"$WORK/$1-source.log" & SRC=$!
  "$BIN" sink --config "$WORK/$1-sink.toml" 2>>"$WORK/$1-sink.log" & SNK=$!
  OWN_PIDS+=("$SRC" "$SNK")
}
# stop_pair: the pair's CPU and RSS into SRC_STATS / SNK_STATS, then both stopped.
stop_pair() {
  SRC_STATS=$(proc_stats "$SRC") SNK_STATS=$(proc_stats "$SNK")
  stop_pid "$SNK"; stop_pid "$SRC"
}
# streaming NAME: true once NAME's source streams; stops the bench when the source died
# first (a bad setting: waiting would only run into wait_for's 30 minutes).
streaming() {
  kill -0 "$SRC" 2>/dev/null || die "the source of $1 stopped ($SETTING): $(tail -n 3 "$WORK/$1-source.log")"
  grep -q "streaming changes" "$WORK/$1-source.log"
}
# save_position NAME [WITH_SINK_UNTIL_COUNT]: the source opens its stream once (and the
# sink applies the copy first, when a count is given), then both stop.
save_position() {
  "$BIN" source --config "$WORK/$1-source.toml" 2>>"$WORK/$1-source.log" & SRC=$!
  OWN_PIDS+=("$SRC")
  if [ -n "${2:-}" ]; then
    "$BIN" sink --config "$WORK/$1-sink.toml" 2>>"$WORK/$1-sink.log" & SNK=$!
    OWN_PIDS+=("$SNK")
    wait_for target_has "$1" "$2"
    stop_pid "$SNK"
  fi
  wait_for streaming "$1"
  sleep 1
  stop_pid "$SRC"
}
verify_equal() {
  "$BIN" verify --config "$WORK/$1-source.toml" --collection "$1" --wait-for-quiet 60 --documents-only >"$WORK/$1-verify.txt" \
    || die "verify $1 ($SETTING): $(cat "$WORK/$1-verify.txt")"
}

# measured JOB NAME OPS START_TIME BYTES_BEFORE [SAMPLES]: one table row for a job that
# ended now. SAMPLES (from sample_link) give the rate while the documents crossed: the
# bytes of the loaded direction between 5 % and 95 % of its total, over the time between,
# so the processes' start, the group's join and the last stragglers are left out.
measured() {
  local job=$1 name=$2 ops=$3 t0=$4 before=$5 samples=${6:-/dev/null} t1 after
  t1=$(now)
  after=$(link_bytes)
  LINK_ROWS+=("$(python3 - "$job" "$ops" "$t0" "$t1" "$before" "$after" "$SRC_STATS" "$SNK_STATS" "$samples" <<'PY'
import os, sys
job, ops, t0, t1 = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
up0, down0 = map(int, sys.argv[5].split()); up1, down1 = map(int, sys.argv[6].split())
src_rss, src_cpu = sys.argv[7].split(); snk_rss, snk_cpu = sys.argv[8].split()
placement, delay, mbit = os.environ["PLACEMENT"], int(os.environ["DELAY"]), int(os.environ["MBIT"])
secs = t1 - t0
rate = ops / secs
total = (up1 - up0 + down1 - down0) / ops
# The capped direction that carries the documents: towards the broker in A, from it in B.
heavy = ((up1 - up0) if placement == "A" else (down1 - down0)) / ops
limit = mbit * 1e6 / 8 / heavy if heavy else 0
per_m = lambda cpu: float(cpu) * 1e6 / ops
col = 1 if placement == "A" else 2
points = [(float(f[0]), int(f[col])) for f in (l.split() for l in open(sys.argv[9])) if len(f) == 3]
crossing = "-"
if len(points) > 2 and points[-1][1] > points[0][1]:
    first, last = points[0][1], points[-1][1]
    lo = next(p for p in points if p[1] - first >= 0.05 * (last - first))
    hi = next(p for p in points if p[1] - first >= 0.95 * (last - first))
    if hi[0] > lo[0] and heavy:
        crossing = f"{(hi[1] - lo[1]) / (hi[0] - lo[0]) / heavy:.0f}"
print(f"{placement}|{2 * delay}|{mbit}|{job}|{rate:.0f}|{secs:.1f}|{total:.0f}|{limit:.0f}|"
      f"{per_m(src_cpu):.1f}|{src_rss}|{per_m(snk_cpu):.1f}|{snk_rss}|{crossing}")
PY
)")
  log "  $job: $ops in $(python3 -c "print(f'{$t1 - $t0:.1f}')") s"
}

# One link setting: the link to the broker's link listener, then the jobs.
link_setting() {
  local i=$1
  "$BIN" link --listen "127.0.0.1:$LINK_PORT" --to "127.0.0.1:$KAFKA_LINK_LISTENER" --delay-ms "$DELAY" --rate-mbit "$MBIT" --control "127.0.0.1:$LINK_CONTROL" 2>"$WORK/link-$i.log" & LINK=$!
  OWN_PIDS+=("$LINK")
  wait_for port_open "$LINK_CONTROL"

  job_wanted inserts && link_inserts "$i"
  job_wanted mixed && link_mixed "$i"
  job_wanted copy && link_copy "$i"
  job_wanted live && link_live "$i"
  job_wanted text && link_text "$i"
  stop_pid "$LINK"
}

# catch_up_inserts NAME N SHAPE JOB: N inserts of SHAPE arrive after the source saved its
# position; one row for the catch-up.
catch_up_inserts() {
  local coll=$1 n=$2 shape=$3 job=$4 before t0
  link_config "$coll" "$coll"
  create_collection "$coll"
  save_position "$coll"
  "$BIN" loadgen --config "$WORK/$coll-source.toml" --collection "$coll" -n "$n" --database wan --append --shape "$shape" >/dev/null
  sampling "$coll"
  before=$(link_bytes); t0=$(now)
  start_pair "$coll"
  wait_for target_has "$coll" "$n"
  stop_pair
  kill "$SAMPLER" 2>/dev/null || true
  measured "$job" "$coll" "$n" "$t0" "$before" "$WORK/$coll-link.txt"
  verify_equal "$coll"
}

link_inserts() {
  catch_up_inserts "ins$1" "$LINK_N" flat "catch-up, inserts"
  [ -n "${BSON_SIZE:-}" ] || BSON_SIZE=$("$PY" -c "from pymongo import MongoClient; print(MongoClient('127.0.0.1', $SOURCE_PORT, directConnection=True)['wan'].command('collStats', 'ins$1')['avgObjSize'])")
}

link_text() {
  catch_up_inserts "text$1" "$LINK_TEXT_N" text "catch-up, text (4 KB)"
}

link_mixed() {
  local i=$1 coll="mix$1" before t0 ops
  link_config "$coll" "$coll"
  "$BIN" loadgen --config "$WORK/$coll-source.toml" --collection "$coll" -n $((LINK_N / 10)) --database wan >/dev/null
  save_position "$coll" $((LINK_N / 10))
  ops=$((LINK_N / 2))
  "$BIN" loadgen --config "$WORK/$coll-source.toml" --collection "$coll" -n "$ops" --database wan --append \
    --mix "$LINK_MIX" --hot $((LINK_N / 10)) --batch 100 --concurrency 4 --seed "$i" >/dev/null
  "$PY" -c "from pymongo import MongoClient; MongoClient('127.0.0.1', $SOURCE_PORT, directConnection=True)['wan']['$coll'].insert_many([{'_id': 10**12 + k} for k in range(128)])"
  sampling "$coll"
  before=$(link_bytes); t0=$(now)
  start_pair "$coll"
  wait_for target_has "$coll" 128 '{"_id": {"$gte": 1000000000000}}'
  stop_pair
  kill "$SAMPLER" 2>/dev/null || true
  measured "catch-up, mixed $LINK_MIX" "$coll" $((ops + 128)) "$t0" "$before" "$WORK/$coll-link.txt"
  verify_equal "$coll"
}

# The inserts' collection again, under a fresh prefix: an initial copy.
link_copy() {
  local i=$1 name="copy$1" coll="ins$1" before t0
  link_config "$name" "$coll"
  "$PY" -c "from pymongo import MongoClient; MongoClient('127.0.0.1', $TARGET_PORT, directConnection=True)['wan'].drop_collection('$coll')"
  sampling "$name"
  before=$(link_bytes); t0=$(now)
  start_pair "$name"
  wait_for target_has "$coll" "$LINK_N"
  stop_pair
  kill "$SAMPLER" 2>/dev/null || true
  measured "initial copy" "$coll" "$LINK_N" "$t0" "$before" "$WORK/$name-link.txt"
  "$BIN" verify --config "$WORK/$name-source.toml" --collection "$coll" --wait-for-quiet 60 --documents-only >"$WORK/$name-verify.txt" \
    || die "verify $name ($SETTING): $(cat "$WORK/$name-verify.txt")"
}

link_live() {
  local i=$1 coll="live$1" lag_p50 lag_p99 lag_max lag_n
  link_config "$coll" "$coll"
  create_collection "$coll"
  start_pair "$coll"
  wait_for streaming "$coll"
  # One document through first: the sink's group formed and its partitions assigned (a
  # first join takes a few seconds, which the lag of the first markers would count).
  "$PY" -c "from pymongo import MongoClient; MongoClient('127.0.0.1', $SOURCE_PORT, directConnection=True)['wan']['$coll'].insert_one({'_id': 'warm-up'})"
  wait_for target_has "$coll" 1
  "$BIN" loadgen --config "$WORK/$coll-source.toml" --collection "$coll" --database wan -n $((5000 * (LIVE_SECS + 10))) --rate 5000 --append >"$WORK/$coll-load.txt" & LOAD=$!
  OWN_PIDS+=("$LOAD")
  sleep 3 # the load at its pace first
  read -r lag_p50 lag_p99 lag_max lag_n < <(LAG_PROBE_TRACE="$WORK/$coll-lags.txt" "$PY" "$DOCREPL_ROOT/scripts/lag_probe.py" "$SOURCE_PORT" "$TARGET_PORT" wan "$coll" "$LIVE_SECS" 0.1) \
    || die "lag probe ($SETTING): markers did not all arrive"
  stop_pid "$LOAD"
  stop_pair
  LINK_ROWS+=("$PLACEMENT|$((2 * DELAY))|$MBIT|live, 5,000 docs/s|$lag_p50/$lag_p99/$lag_max|$lag_n|-|-|-|${SRC_STATS% *}|-|${SNK_STATS% *}|-")
  log "  live: lag p50/p99/max $lag_p50/$lag_p99/$lag_max ms"
}

# link_phases: every setting, then the table (Markdown) on stdout.
link_phases() {
  local i=0
  for SETTING in $LINK_SETTINGS; do
    IFS=: read -r PLACEMENT DELAY MBIT <<<"$SETTING"
    export PLACEMENT DELAY MBIT
    i=$((i + 1))
    log "link $i: placement $PLACEMENT, RTT $((2 * DELAY)) ms, $MBIT Mbit/s"
    link_setting "$i"
  done
  link_table
}

# The rows with each job's ratio to the same job and placement at RTT 0 and what the
# issue's targets say of it.
link_table() {
  echo "Across an emulated link: LINK_N = $LINK_N documents of ${BSON_SIZE:-?} bytes BSON, $LINK_PARTITIONS partitions, compression ${KAFKA_COMPRESSION:-lz4}${KAFKA_PROPERTIES:+, properties: $KAFKA_PROPERTIES} ($(nproc) cores, mongod 6.0.5 x2, Apache Kafka $KAFKA_VERSION (1 broker, KRaft), all on loopback). A: broker in the target region; B: in the source region."
  echo
  echo "| placement | RTT (ms) | link (Mbit/s) | job | docs/s or lag p50/p99/max (ms) | s or markers | vs RTT 0 | bytes/doc on the link | link limit (docs/s) | docs/s while crossing (share of the limit) | source CPU-s/M, RSS MB | sink CPU-s/M, RSS MB |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
  printf '%s\n' "${LINK_ROWS[@]}" | python3 -c "
import sys
rows = [l.rstrip('\n').split('|') for l in sys.stdin if l.strip()]
base = {(r[0], r[3]): float(r[4]) for r in rows if r[1] == '0' and not r[3].startswith('live')}
for p, rtt, mbit, job, value, secs, per_doc, limit, scpu, srss, kcpu, krss, crossing in rows:
    capped = mbit != '1000' and limit != '-' and float(limit)
    if job.startswith('live'):
        ratio = '-'
    else:
        b = base.get((p, job))
        ratio = f'{float(value) / b:.2f}' if b else '-'
        # At a capped link, how much of what the link could carry the job used: over the
        # whole job (start included), and while the documents crossed.
        if crossing != '-':
            crossing = f'{int(crossing):,}' + (f' ({int(crossing) / float(limit):.2f})' if capped else '')
        limit = f'{int(limit):,} ({float(value) / float(limit):.2f} used)' if capped else '-'
        value = f'{int(value):,}'
    # A live row has no CPU per million (the load never ends): '-, RSS'.
    cpu = lambda c, r: f'{c}, {r}'
    print(f'| {p} | {rtt} | {mbit} | {job} | {value} | {secs} | {ratio} | {per_doc} | {limit} | {crossing} | {cpu(scpu, srss)} | {cpu(kcpu, krss)} |')
"
}
