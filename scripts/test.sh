#!/usr/bin/env bash
# The test command: installs the tools (cached), starts the local services unless they
# already run, runs every test (unit, property and integration), and stops the services
# it started, also when a test fails. Extra arguments go to `cargo test`.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$DOCREPL_ROOT"

"$DOCREPL_ROOT/scripts/setup.sh"

# Build artifacts are cached beside the tools, so a fresh clone does not rebuild every
# dependency (librdkafka alone takes minutes on 2 cores).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$DOCREPL_CACHE/target}"

started=0
if ! "$DOCREPL_ROOT/scripts/services.sh" status | grep -q "broker: running"; then
  started=1
fi
cleanup() { [ "$started" = 1 ] && "$DOCREPL_ROOT/scripts/services.sh" stop || true; }
trap cleanup EXIT
"$DOCREPL_ROOT/scripts/services.sh" start

export DOCREPL_TEST_SOURCE_URI="mongodb://127.0.0.1:$SOURCE_PORT/?replicaSet=rs-source"
export DOCREPL_TEST_TARGET_URI="mongodb://127.0.0.1:$TARGET_PORT/?replicaSet=rs-target"
export DOCREPL_TEST_BROKER="127.0.0.1:$BROKER_PORT"
export DOCREPL_MONGOD_BIN="$MONGOD_BIN"
export DOCREPL_TEST_BROKER_LINKS="$DOCREPL_BROKER_LINKS"
export DOCREPL_KAFKA_LIBS="$KAFKA_LIBS" DOCREPL_MSK_IAM_LIBS="$MSK_IAM_LIBS"
log "broker: Apache Kafka $KAFKA_VERSION (KRaft) on $DOCREPL_TEST_BROKER"
# Every test binary runs even after one fails (cargo stops at the first by default), so a
# red run names all that failed: a signer's test failing once hid 11 test binaries' results.
cargo test --all-targets --no-fail-fast "$@"
