#!/usr/bin/env bash
# Runs the official OCI distribution-spec conformance suite against live
# `berth serve` processes, with pull, push, content discovery and content
# management enabled, in both teardown orders (OCI_DELETE_MANIFEST_BEFORE_BLOBS
# =1 and =0) and with a cross-mount namespace, in two deployments:
#
#   single    one replica, filesystem blob store
#   replicas  three replicas behind a round-robin proxy, sharing one database
#             and one S3 bucket (or one directory when no S3 server is given)
#
# Fails unless every run reports zero failures.
#
# Environment:
#   BERTH_TEST_DATABASE_URL  PostgreSQL to use (default: the local server's
#                            "test" database); each deployment gets its own
#                            schema, dropped afterwards.
#   BERTH_TEST_S3_ENDPOINT, BERTH_TEST_S3_BUCKET, BERTH_TEST_S3_ACCESS_KEY,
#   BERTH_TEST_S3_SECRET_KEY
#                            the S3 server for the replicas deployment
#                            (scripts/versitygw.sh start prints them)
#   BERTH_CACHE_DIR          where the built suite is kept (default ./.cache)
#   BERTH_CONFORMANCE_KEEP=1 keep the replicas' logs and the suite's reports
set -euo pipefail
cd "$(dirname "$0")/.."

CONF_MODULE=github.com/opencontainers/distribution-spec/conformance
CONF_VERSION=v0.0.0-20231101194043-f2182352d4cc
CACHE=${BERTH_CACHE_DIR:-$PWD/.cache}
DB_URL=${BERTH_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test?sslmode=disable}
mkdir -p "$CACHE"
export PGOPTIONS="-c client_min_messages=warning"

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
go build -o "$CACHE/rrproxy" ./tools/rrproxy

run=$(mktemp -d)
pids=()
schemas=()
cleanup() {
	for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
	wait 2>/dev/null || true
	for schema in "${schemas[@]}"; do psql "$DB_URL" -qc "DROP SCHEMA $schema CASCADE" || true; done
	if [ -n "${BERTH_CONFORMANCE_KEEP:-}" ]; then
		echo "conformance: logs and reports kept in $run" >&2
	else
		rm -rf "$run"
	fi
}
trap cleanup EXIT

# new_schema sets schema_url to a database URL on a fresh schema. (Not a
# command substitution: the schema must be recorded in this shell, for the
# cleanup and for the next name.)
new_schema() {
	local schema=conformance_$$_${#schemas[@]}_$(date +%s)
	psql "$DB_URL" -v ON_ERROR_STOP=1 -qc "CREATE SCHEMA $schema"
	schemas+=("$schema")
	case "$DB_URL" in *\?*) schema_url="$DB_URL&search_path=$schema" ;; *) schema_url="$DB_URL?search_path=$schema" ;; esac
}

# wait_for <log file> <sed pattern with one group> <pid>: sets found to the
# group once it appears in the log. Like the other helpers it sets a
# variable rather than printing: a command substitution would run it in a
# subshell, where what it records (pids, schemas) is lost to the cleanup.
wait_for() {
	local log=$1 pattern=$2 pid=$3
	found=
	for _ in $(seq 300); do
		# The process creates its log itself, maybe after the first look.
		[ -e "$log" ] && found=$(sed -n "s/$pattern/\1/p" "$log" | head -1)
		[ -n "$found" ] && return
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	echo "conformance: process did not start:" >&2
	cat "$log" >&2
	return 1
}

# start_berth <log file> <flags...>: starts a replica and sets addr to its
# address.
start_berth() {
	local log=$1
	shift
	"$CACHE/berth" serve --listen 127.0.0.1:0 --data-dir "$run/data-$(basename "$log" .log)" "$@" >"$log" 2>&1 &
	pids+=($!)
	wait_for "$log" '.*msg="berth serving" addr=\([^ ]*\).*' $!
	addr=$found
}

# run_suite <deployment> <url>: both teardown orders against url.
run_suite() {
	local deployment=$1 url=$2 order report status
	for order in 1 0; do
		report=$run/report-$deployment-$order
		mkdir -p "$report"
		echo "conformance: $deployment, OCI_DELETE_MANIFEST_BEFORE_BLOBS=$order against $url"
		status=0
		env OCI_ROOT_URL="$url" \
			OCI_NAMESPACE="conformance/$deployment$order/repo" \
			OCI_CROSSMOUNT_NAMESPACE="conformance/$deployment$order/mounted" \
			OCI_TEST_PULL=1 OCI_TEST_PUSH=1 OCI_TEST_CONTENT_DISCOVERY=1 OCI_TEST_CONTENT_MANAGEMENT=1 \
			OCI_AUTOMATIC_CROSSMOUNT=0 \
			OCI_DELETE_MANIFEST_BEFORE_BLOBS=$order \
			OCI_REPORT_DIR="$report" \
			"$suite" -ginkgo.no-color >"$report/output.txt" 2>&1 || status=1
		# Summary line, then every skipped spec with the reason it cannot run.
		grep -E '^(Ran |SUCCESS|FAIL)|Passed \|' "$report/output.txt" || true
		sed -n 's/.*<testcase name="\[It\] OCI Distribution Conformance Tests \([^"]*\)".*status="skipped".*/  skipped (suite branch not applicable): \1/p' "$report/junit.xml"
		if ! grep -q 'failures="0"' "$report/junit.xml" || ! grep -q 'errors="0"' "$report/junit.xml"; then
			status=1
		fi
		if [ $status -ne 0 ]; then
			cat "$report/output.txt"
			for log in "$run"/*.log; do
				echo "--- $log"
				grep -v 'level=DEBUG' "$log" | tail -40 || true
			done
			exit 1
		fi
	done
}

# One replica on the filesystem.
new_schema
start_berth "$run/single.log" --database-url "$schema_url"
run_suite single "http://$addr"

# Three replicas on one database and one blob store, round robin.
new_schema
url=$schema_url
if [ -n "${BERTH_TEST_S3_ENDPOINT:-}" ]; then
	storage=(--storage s3 --s3-endpoint "$BERTH_TEST_S3_ENDPOINT" --s3-bucket "$BERTH_TEST_S3_BUCKET"
		--s3-prefix "conformance-$$/" --s3-force-path-style)
	export AWS_ACCESS_KEY_ID=$BERTH_TEST_S3_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$BERTH_TEST_S3_SECRET_KEY
	echo "conformance: replicas share the S3 bucket $BERTH_TEST_S3_BUCKET at $BERTH_TEST_S3_ENDPOINT"
else
	storage=(--storage-dir "$run/shared-blobs")
	echo "conformance: no S3 server given (BERTH_TEST_S3_ENDPOINT); replicas share a directory"
fi
backends=()
for i in 1 2 3; do
	start_berth "$run/replica$i.log" --database-url "$url" "${storage[@]}"
	backends+=("http://$addr")
done
"$CACHE/rrproxy" -listen 127.0.0.1:0 "${backends[@]}" >"$run/rrproxy.log" 2>&1 &
pids+=($!)
wait_for "$run/rrproxy.log" 'rrproxy listening on \(.*\)' $!
run_suite replicas "http://$found"

echo "conformance: all runs passed"
