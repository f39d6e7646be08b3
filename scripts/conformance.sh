#!/usr/bin/env bash
# Runs the official OCI distribution-spec conformance suite against a live
# `berth serve`, with pull, push, content discovery and content management
# enabled, in both teardown orders (OCI_DELETE_MANIFEST_BEFORE_BLOBS=1 and
# =0) and with a cross-mount namespace. Fails unless every run reports zero
# failures.
#
# Environment:
#   BERTH_TEST_DATABASE_URL  PostgreSQL to use (default: the local server's
#                            "test" database); the run gets its own schema,
#                            dropped afterwards.
#   BERTH_CACHE_DIR          where the built suite is kept (default ./.cache)
set -euo pipefail
cd "$(dirname "$0")/.."

CONF_MODULE=github.com/opencontainers/distribution-spec/conformance
CONF_VERSION=v0.0.0-20231101194043-f2182352d4cc
CACHE=${BERTH_CACHE_DIR:-$PWD/.cache}
DB_URL=${BERTH_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test?sslmode=disable}
mkdir -p "$CACHE"

suite=$CACHE/conformance-$CONF_VERSION.test
if [ ! -x "$suite" ]; then
	echo "conformance: building the suite $CONF_MODULE@$CONF_VERSION"
	work=$(mktemp -d)
	# The module is served by the proxy but not by the checksum database.
	export GONOSUMDB=github.com/opencontainers/distribution-spec
	dir=$(cd "$work" && GOFLAGS=-mod=mod go mod download -json "$CONF_MODULE@$CONF_VERSION" |
		sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
	cp -r "$dir/." "$work/src"
	chmod -R u+w "$work/src"
	(cd "$work/src" && GOFLAGS=-mod=mod go test -c -o "$suite" .)
	rm -rf "$work"
fi

go build -o "$CACHE/berth" ./cmd/berth

schema=conformance_$$_$(date +%s)
export PGOPTIONS="-c client_min_messages=warning"
psql "$DB_URL" -qc "CREATE SCHEMA $schema"
case "$DB_URL" in *\?*) url="$DB_URL&search_path=$schema" ;; *) url="$DB_URL?search_path=$schema" ;; esac
run=$(mktemp -d)
berth_pid=
cleanup() {
	[ -n "$berth_pid" ] && kill "$berth_pid" 2>/dev/null && wait "$berth_pid" 2>/dev/null || true
	psql "$DB_URL" -qc "DROP SCHEMA $schema CASCADE" || true
	rm -rf "$run"
}
trap cleanup EXIT

"$CACHE/berth" serve --listen 127.0.0.1:0 --database-url "$url" --data-dir "$run/data" \
	>"$run/berth.log" 2>&1 &
berth_pid=$!
addr=
for _ in $(seq 100); do
	addr=$(sed -n 's/.*msg="berth serving" addr=\([^ ]*\).*/\1/p' "$run/berth.log")
	[ -n "$addr" ] && break
	kill -0 "$berth_pid" 2>/dev/null || { cat "$run/berth.log"; exit 1; }
	sleep 0.1
done
[ -n "$addr" ] || { echo "conformance: berth did not start"; cat "$run/berth.log"; exit 1; }

status=0
for order in 1 0; do
	report=$run/report-$order
	mkdir -p "$report"
	echo "conformance: OCI_DELETE_MANIFEST_BEFORE_BLOBS=$order against http://$addr"
	if ! env OCI_ROOT_URL="http://$addr" \
		OCI_NAMESPACE="conformance/order$order/repo" \
		OCI_CROSSMOUNT_NAMESPACE="conformance/order$order/mounted" \
		OCI_TEST_PULL=1 OCI_TEST_PUSH=1 OCI_TEST_CONTENT_DISCOVERY=1 OCI_TEST_CONTENT_MANAGEMENT=1 \
		OCI_AUTOMATIC_CROSSMOUNT=0 \
		OCI_DELETE_MANIFEST_BEFORE_BLOBS=$order \
		OCI_REPORT_DIR="$report" \
		"$suite" -ginkgo.no-color >"$report/output.txt" 2>&1; then
		status=1
	fi
	# Summary line, then every skipped spec with the reason it cannot run.
	grep -E '^(Ran |SUCCESS|FAIL)|Passed \|' "$report/output.txt" || true
	sed -n 's/.*<testcase name="\[It\] OCI Distribution Conformance Tests \([^"]*\)".*status="skipped".*/  skipped (suite branch not applicable): \1/p' "$report/junit.xml"
	if ! grep -q 'failures="0"' "$report/junit.xml" || ! grep -q 'errors="0"' "$report/junit.xml"; then
		status=1
	fi
	if [ $status -ne 0 ]; then
		cat "$report/output.txt"
		echo "--- berth log"
		tail -50 "$run/berth.log"
		exit 1
	fi
done
echo "conformance: all runs passed"
