#!/usr/bin/env bash
# End-to-end benchmark on this machine: `scripts/bench.sh [N]` (default 1,000,000).
# Runs its own services on their own ports (Apache Kafka, one broker) and measures, first,
# job for job beside the Kafka Connect pipeline (scripts/bench_jobs.sh): the initial copy of
# N documents, the change-stream catch-up of N inserts and of N / 10 updates; then:
#   ceiling   loadgen straight into the target cluster (the fastest these documents go in)
#   source    docrepl source alone draining an N-document backlog into the topic (8 partitions)
#   sink      docrepl sink alone applying those N events (8 partitions), then with 1 partition
#   drain     the initial copy: source + sink (docrepl run) on a fresh topic prefix after
#             N inserts, until verify says equal
#   live      docrepl run under a steady 5,000 docs/s load for 60 s: end-to-end lag of
#             marker documents (source write acknowledged -> visible on the target)
# plus peak RSS and CPU seconds per million documents of each docrepl process; then the
# cross-region phases (scripts/bench_link.sh): catch-up of inserts, catch-up of mixed
# changes, the initial copy, the live lag and a catch-up of 4 KB text documents, each
# across an emulated WAN link, a row per
# job and link setting (LINK_SETTINGS, LINK_N, LIVE_SECS; see that file).
# BENCH_PHASES="jobs local link" (default: all three) picks the parts.
# Prints the tables and saves them as Markdown (and the jobs and local ones as JSON) under
# benches/results/.
set -euo pipefail
N="${1:-${N:-1000000}}"
BENCH_PHASES="${BENCH_PHASES:-jobs local link}"
# Own ports and data folder: the bench never touches the demo's or the tests' services.
export DOCREPL_DATA="$(cd "$(dirname "$0")/.." && pwd)/.data/bench"
export DOCREPL_SOURCE_PORT=28117 DOCREPL_TARGET_PORT=28217 DOCREPL_BROKER_PORT=19192
. "$(dirname "$0")/lib.sh"
cd "$DOCREPL_ROOT"

own_services
release_build
WORK="$DOCREPL_DATA/run"
mkdir -p "$WORK" "$DOCREPL_ROOT/benches/results"

# config PREFIX PARTITIONS HTTP_PORT GROUP [COLLECTION]: lib.sh's bench_config over
# bench.COLLECTION (default docs) on the bench's broker.
config() {
  bench_config "$WORK/$1.toml" bench "${5:-docs}" "$1" "$4" "127.0.0.1:$BROKER_PORT" "$2" "$3"
  echo "$WORK/$1.toml"
}

secs() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$2"; }
rate() { python3 -c "import sys; n,t=float(sys.argv[1]),float(sys.argv[2]); print(f'{n/t:.0f}')" "$1" "$2"; }
# published PORT: events the source on that status port has published.
published() { curl -sf "http://127.0.0.1:$1/status" | python3 -c "import json,sys; s=json.load(sys.stdin); print(sum(c.get('events_published',0) for c in s['collections'].values()))" 2>/dev/null || echo 0; }
published_at_least() { [ "$(published "$1")" -ge "$2" ]; }
target_at_least() { [ "$(count_docs "$TARGET_PORT" bench "$1")" -ge "$2" ]; }
PY="$PYTHON_VENV/bin/python"
"$PY" -c 'import sys' # the venv from setup.sh
. "$DOCREPL_ROOT/scripts/bench_link.sh"
. "$DOCREPL_ROOT/scripts/bench_jobs.sh"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
md="$DOCREPL_ROOT/benches/results/bench-$N-$stamp.md"
: >"$md"

local_phases() {
log "1/5 ceiling: $N documents straight into the target"
CFG=$(config b8 8 18201 g8)
ceiling=$("$BIN" loadgen --config "$CFG" --target --collection ceiling -n "$N" --database bench | sed -E 's/.* = ([0-9]+) docs\/s.*/\1/')

log "2/5 source: a change-stream backlog of $N inserts into the topic"
# Open the stream on the empty collection once (saves its position), stop, then insert:
# the next start catches up through the change stream, as after an outage.
"$PY" -c "from pymongo import MongoClient; MongoClient('127.0.0.1', $SOURCE_PORT, directConnection=True)['bench'].create_collection('docs')"
"$BIN" source --config "$CFG" 2>"$WORK/source0.log" & SRC=$!
wait_for grep -q "streaming changes" "$WORK/source0.log"
sleep 2
stop_pid $SRC
"$BIN" loadgen --config "$CFG" --collection docs -n "$N" --database bench --append >/dev/null
t0=$(now)
"$BIN" source --config "$CFG" 2>"$WORK/source.log" & SRC=$!
wait_for published_at_least 18201 "$N"
t1=$(now)
read -r src_rss src_cpu < <(proc_stats $SRC)
stop_pid $SRC
source_rate=$(rate "$N" "$(secs "$t0" "$t1")")

log "3/5 sink: applying $N events from 8 partitions"
t0=$(now)
"$BIN" sink --config "$CFG" 2>"$WORK/sink.log" & SNK=$!
wait_for target_at_least docs "$N"
t1=$(now)
read -r snk_rss snk_cpu < <(proc_stats $SNK)
stop_pid $SNK
sink8_rate=$(rate "$N" "$(secs "$t0" "$t1")")

log "    and from 1 partition"
CFG1=$(config b1 1 18202 g1)
"$PY" -c "from pymongo import MongoClient; MongoClient('127.0.0.1', $TARGET_PORT, directConnection=True)['bench']['docs'].drop()"
"$BIN" source --config "$CFG1" 2>"$WORK/source1.log" & SRC=$!
wait_for published_at_least 18202 "$N"
stop_pid $SRC
t0=$(now)
"$BIN" sink --config "$CFG1" 2>"$WORK/sink1.log" & SNK=$!
wait_for target_at_least docs "$N"
t1=$(now)
stop_pid $SNK
sink1_rate=$(rate "$N" "$(secs "$t0" "$t1")")

log "4/5 drain: the initial copy, source + sink together on a fresh prefix over $N documents"
"$PY" -c "from pymongo import MongoClient; MongoClient('127.0.0.1', $TARGET_PORT, directConnection=True)['bench']['docs'].drop()"
CFGD=$(config bd 8 18203 gd)
t0=$(now)
"$BIN" run --config "$CFGD" 2>"$WORK/run.log" & RUN=$!
# Poll the cheap count while it drains (a full verify per poll would steal the CPU it
# measures), then one verify must say equal.
wait_for target_at_least docs "$N"
t1=$(now)
"$BIN" verify --config "$CFGD" --collection docs --wait-for-quiet 60 >"$WORK/verify.txt" || die "verify: $(cat "$WORK/verify.txt")"
read -r run_rss run_cpu < <(proc_stats $RUN)
stop_pid $RUN
drain_secs=$(secs "$t0" "$t1")
drain_rate=$(rate "$N" "$drain_secs")
ratio=$(python3 -c "print(f'{$drain_rate/$ceiling:.2f}')")
per_m() { python3 -c "print(f'{$1*1e6/$N:.1f}')"; }

log "5/5 live: 5,000 docs/s for 60 s with docrepl running; lag of marker documents"
CFGL=$(config bl 8 18204 gl live)
"$PY" -c "from pymongo import MongoClient; db = MongoClient('127.0.0.1', $SOURCE_PORT, directConnection=True)['bench']; db.drop_collection('live'); db.create_collection('live')"
"$BIN" run --config "$CFGL" 2>"$WORK/live.log" & RUN=$!
wait_for grep -q "streaming changes" "$WORK/live.log"
"$BIN" loadgen --config "$CFGL" --collection live --database bench -n 330000 --rate 5000 --append >"$WORK/live-load.txt" & LOAD=$!
sleep 3 # the load at its pace first
read -r lag_p50 lag_p99 lag_max lag_n < <("$PY" "$DOCREPL_ROOT/scripts/lag_probe.py" "$SOURCE_PORT" "$TARGET_PORT" bench live 60 0.1) \
  || die "lag probe: markers did not all arrive"
wait "$LOAD" || true
read -r live_rss live_cpu < <(proc_stats $RUN)
stop_pid $RUN

cat >>"$md" <<EOF
docrepl end-to-end benchmark, N = $N small documents ($(nproc) cores, $(free -g | awk '/Mem/ {print $2}') GiB, mongod 6.0.5 x2, Apache Kafka $KAFKA_VERSION (1 broker, KRaft), all on loopback)

| measure | value |
|---|---|
| ceiling: loadgen into the target (docs/s) | $ceiling |
| source alone: backlog into the topic, 8 partitions (events/s) | $source_rate |
| sink alone: 8 partitions (docs/s) | $sink8_rate |
| sink alone: 1 partition (docs/s) | $sink1_rate |
| drain (initial copy): source + sink in one process until verify equal (docs/s) | $drain_rate ($drain_secs s) |
| drain / ceiling | $ratio |
| source: peak RSS (MB), CPU s per million | $src_rss, $(per_m "$src_cpu") |
| sink: peak RSS (MB), CPU s per million | $snk_rss, $(per_m "$snk_cpu") |
| run (both): peak RSS (MB), CPU s per million | $run_rss, $(per_m "$run_cpu") |
| live, 5,000 docs/s for 60 s: end-to-end lag p50 / p99 / max (ms, $lag_n markers) | $lag_p50 / $lag_p99 / $lag_max |
| live: peak RSS (MB), CPU s for the whole live phase | $live_rss, $live_cpu |
EOF
cat >"${md%.md}.json" <<EOF
{"n": $N, "ceiling_docs_per_s": $ceiling, "source_events_per_s": $source_rate, "sink8_docs_per_s": $sink8_rate,
 "sink1_docs_per_s": $sink1_rate, "drain_docs_per_s": $drain_rate, "drain_seconds": $drain_secs, "drain_over_ceiling": $ratio,
 "source_peak_rss_mb": $src_rss, "source_cpu_s": $src_cpu, "sink_peak_rss_mb": $snk_rss, "sink_cpu_s": $snk_cpu,
 "run_peak_rss_mb": $run_rss, "run_cpu_s": $run_cpu,
 "live_lag_p50_ms": $lag_p50, "live_lag_p99_ms": $lag_p99, "live_lag_max_ms": $lag_max, "live_markers": $lag_n,
 "live_peak_rss_mb": $live_rss, "live_cpu_s": $live_cpu}
EOF
}

case " $BENCH_PHASES " in *" jobs "*) jobs_phases >>"$md" ;; esac
case " $BENCH_PHASES " in *" local "*) [ -s "$md" ] && echo >>"$md"; local_phases ;; esac
case " $BENCH_PHASES " in *" link "*) [ -s "$md" ] && echo >>"$md"; link_phases >>"$md" ;; esac
cat "$md"
