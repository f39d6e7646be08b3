#!/usr/bin/env bash
# Runs the official OCI distribution-spec conformance suites against live
# `berth serve` processes, in four deployments:
#
#   single          one replica, filesystem blob store
#   replicas        three replicas behind a round-robin proxy, sharing one
#                   database and one S3 bucket (or one directory when no S3
#                   server is given)
#   single-token,   the same two with --auth token (the Docker token
#   replicas-token  protocol, Berth's own token service). The suites log in
#                   as an admin made with `berth user add --admin` (their
#                   OCI_USERNAME and OCI_PASSWORD): on a 401 they ask the
#                   token service the challenge names for a token with the
#                   challenge's scope, with Basic credentials, and retry.
#                   Behind the proxy, the 401, the token request and the
#                   retry reach different replicas.
#
# In token mode, a token taken from a challenge carries only the scopes the
# challenge names. A mount's challenge names pull on the from= repository
# too, so the 2023 suite, which takes a token from each challenge, mounts.
# The newest suite keeps a token per repository and method: its mount goes
# out with the token of an earlier POST, which lacks pull on from=, so
# Berth opens an upload session instead (202, as the spec allows) and the
# suite skips what would follow the mount. Clients that ask for the
# source's scope themselves, as crane and docker do, mount:
# scripts/auth-clients.sh checks it.
#
# Against each deployment run:
#
#   - the 2023 suite (a ginkgo test binary from the Go module proxy), with
#     pull, push, content discovery and content management enabled, in both
#     teardown orders (OCI_DELETE_MANIFEST_BEFORE_BLOBS=1 and =0) and with a
#     cross-mount namespace;
#   - the newest suite (a plain Go program, not on the module proxy: built
#     from the copy in shared/third_party/oci-conformance), with every
#     optional API and data set switched on except sparse manifests, whose
#     descriptors reference blobs that were never pushed and which Berth
#     refuses by design (MANIFEST_BLOB_UNKNOWN). Every API and data set
#     must pass, except the exceptions listed in LATEST_EXPECTED, which are
#     printed with their reasons on every run.
#
# Fails unless every run reports zero failures.
#
# Environment:
#   BERTH_TEST_DATABASE_URL  PostgreSQL to use (default: the local server's
#                            "test" database); each deployment gets its own
#                            schema, dropped afterwards.
#   BERTH_TEST_S3_ENDPOINT, BERTH_TEST_S3_BUCKET, BERTH_TEST_S3_ACCESS_KEY,
#   BERTH_TEST_S3_SECRET_KEY
#                            the S3 server for the replicas deployments
#                            (scripts/versitygw.sh start prints them)
#   BERTH_CACHE_DIR          where the built suites are kept (default ./.cache)
#   BERTH_OCI_CONFORMANCE_DIR
#                            the newest suite's source: a directory holding
#                            conformance/ (or the conformance directory
#                            itself); default ../shared/third_party/
#                            oci-conformance beside the repository, else
#                            /work/shared/third_party/oci-conformance. When
#                            none is found, the newest suite is skipped with
#                            a warning; a BERTH_OCI_CONFORMANCE_DIR that
#                            holds no suite is an error.
#   BERTH_CONFORMANCE_KEEP=1 keep the replicas' logs and the suites' reports
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

# The newest suite. Built once per content (the copy has no .git, so the
# key is the commit its README names plus a hash of the source) from a
# writable copy, as the source may be read-only.
latest_suite=
latest_missing=
find_latest_source() {
	local dir
	if [ -n "${BERTH_OCI_CONFORMANCE_DIR:-}" ]; then
		for dir in "$BERTH_OCI_CONFORMANCE_DIR/conformance" "$BERTH_OCI_CONFORMANCE_DIR"; do
			[ -f "$dir/go.mod" ] && [ -f "$dir/config.go" ] && latest_src=$dir && return
		done
		echo "conformance: BERTH_OCI_CONFORMANCE_DIR=$BERTH_OCI_CONFORMANCE_DIR holds no conformance suite (no go.mod and config.go)" >&2
		exit 1
	fi
	for dir in "$PWD/../shared/third_party/oci-conformance" /work/shared/third_party/oci-conformance; do
		[ -f "$dir/conformance/go.mod" ] && [ -f "$dir/conformance/config.go" ] && latest_src=$dir/conformance && return
	done
	latest_src=
}
find_latest_source
if [ -z "$latest_src" ]; then
	latest_missing="the newest OCI conformance suite was not found (set BERTH_OCI_CONFORMANCE_DIR, or put it in ../shared/third_party/oci-conformance)"
	echo "conformance: !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!" >&2
	echo "conformance: !!! SKIPPING: $latest_missing" >&2
	echo "conformance: !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!" >&2
else
	latest_commit=$(sed -n 's/.*[Cc]ommit \([0-9a-f]\{7,40\}\).*/\1/p' "$latest_src/../README.md" 2>/dev/null | head -1 | cut -c1-12 || true)
	latest_hash=$(cd "$latest_src" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-12)
	latest_suite=$CACHE/oci-conformance-${latest_commit:-unknown}-$latest_hash
	if [ ! -x "$latest_suite" ]; then
		echo "conformance: building the newest suite (commit ${latest_commit:-unknown}) from $latest_src"
		work=$(mktemp -d)
		cp -r "$latest_src/." "$work/src"
		chmod -R u+w "$work/src"
		(cd "$work/src" && GOFLAGS=-mod=mod go build -buildvcs=false \
			-ldflags "-X main.Version=${latest_commit:-unknown}" -o "$latest_suite.tmp" .)
		mv "$latest_suite.tmp" "$latest_suite"
		rm -rf "$work"
	fi
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
		env "${auth_env[@]}" OCI_ROOT_URL="$url" \
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

# What the newest suite may report other than Pass, as "<name in its
# summary>|<status>|<why>": an API or data set absent from this list must
# pass, and one in it must have exactly this status.
LATEST_EXPECTED=(
	"Blob anonymous mount|Skip|a mount without from= is answered 202 (a new upload session), as the spec allows: \"The registry MAY treat the from parameter as optional\"; mounting whatever repository holds the digest would make any blob readable to whoever knows its digest"
	"Sparse Manifests|Disabled|OCI_DATA_SPARSE=false: Berth refuses manifests whose blobs were not pushed (400 MANIFEST_BLOB_UNKNOWN), as the spec allows: \"A registry MAY reject a manifest uploaded to the manifest endpoint with descriptors in other fields that reference a manifest or blob that does not exist in the registry\""
)

# run_latest <deployment> <host:port>: the newest suite against the
# deployment, every optional API and data set on but sparse manifests.
run_latest() {
	local deployment=$1 registry=$2 status=0 start
	local results=$run/latest-$deployment
	if [ -z "$latest_suite" ]; then
		echo "conformance: !!! SKIPPING the newest suite against $deployment: $latest_missing" >&2
		return
	fi
	mkdir -p "$results"
	echo "conformance: $deployment, newest suite (commit ${latest_commit:-unknown}) against $registry"
	start=$SECONDS
	# Only the settings below: no OCI_* of the caller's environment (nor a
	# configuration file, hence the directory) may change what runs.
	(cd "$results" && env $(env | sed -n 's/^\(OCI_[A-Za-z0-9_]*\)=.*/-u \1/p') \
		OCI_REGISTRY="$registry" OCI_TLS=disabled OCI_VERSION=1.1 \
		OCI_REPO1="conformance/$deployment-latest/repo1" OCI_REPO2="conformance/$deployment-latest/repo2" \
		OCI_RESULTS_DIR="$results" OCI_LOG=warn "${auth_env[@]}" \
		OCI_API_PING=true OCI_API_PULL=true OCI_API_PUSH=true OCI_API_REFERRER=true \
		OCI_API_BLOBS_ATOMIC=true OCI_API_BLOBS_DELETE=true OCI_API_BLOBS_DIGEST_HEADER=true \
		OCI_API_BLOBS_MOUNT_ANONYMOUS=true OCI_API_BLOBS_UPLOAD_CANCEL=true \
		OCI_API_MANIFESTS_ATOMIC=true OCI_API_MANIFESTS_DELETE=true OCI_API_MANIFESTS_DIGEST_HEADER=true \
		OCI_API_MANIFESTS_TAG_PARAM=true \
		OCI_API_TAGS_ATOMIC=true OCI_API_TAGS_DELETE=true OCI_API_TAGS_LIST=true \
		OCI_DATA_IMAGE=true OCI_DATA_INDEX=true OCI_DATA_INDEX_LIST=true OCI_DATA_SPARSE=false \
		OCI_DATA_ARTIFACT=true OCI_DATA_SUBJECT=true OCI_DATA_SUBJECT_MISSING=true \
		OCI_DATA_ARTIFACT_LIST=true OCI_DATA_SUBJECT_LIST=true OCI_DATA_DATA_FIELD=true \
		OCI_DATA_NONDISTRIBUTABLE=true OCI_DATA_CUSTOM_FIELDS=true OCI_DATA_NO_LAYERS=true \
		OCI_DATA_EMPTY_BLOB=true OCI_DATA_SHA512=true \
		"$latest_suite" >"$results/output.txt" 2>&1) || status=1
	# The summary: counts, then the status of every API and data set.
	sed -n '/^OCI Conformance Result:/,$p' "$results/output.txt"
	echo "conformance: $deployment, newest suite took $((SECONDS - start))s"
	# The suite exits 0 when it cannot even load its configuration, so
	# demand its summary and its reports as well.
	grep -q '^OCI Conformance Result: Pass$' "$results/output.txt" || status=1
	grep -Eq '^  FAIL\.+: +0$' "$results/output.txt" || status=1
	grep -Eq '^  Error\.+: +0$' "$results/output.txt" || status=1
	grep -q 'failures="0"' "$results/junit.xml" 2>/dev/null || status=1
	# Every API and data set passes, but for the expected exceptions, which
	# must be exactly as expected.
	local name got expected entry why
	while IFS='|' read -r name got; do
		expected=Pass
		why=
		for entry in "${LATEST_EXPECTED[@]}"; do
			if [ "${entry%%|*}" = "$name" ]; then
				expected=${entry#*|}
				why=${expected#*|}
				expected=${expected%%|*}
			fi
		done
		if [ "$got" != "$expected" ]; then
			echo "conformance: $deployment, newest suite: $name is $got, expected $expected" >&2
			status=1
		elif [ -n "$why" ]; then
			echo "  expected exception: $name: $got: $why"
		fi
	done < <(sed -n '/^API conformance:/,$s/^  \([^.][^.]*[^. ]\)\.\.*: *\([A-Za-z]*\)$/\1|\2/p' "$results/output.txt")
	# Every test the suite skipped, with its reason (the line after it).
	awk 'skip != "" { r = $0; sub(/^ *- */, "", r); print "  skipped: " skip ": " r; skip = "" }
		/: Skip$/ { skip = $0; sub(/^ */, "", skip); sub(/: Skip$/, "", skip) }' "$results/output.txt"
	if [ $status -ne 0 ]; then
		grep -E ': (FAIL|Error)$' -A3 "$results/output.txt" || true
		grep 'level=WARN\|level=ERROR' "$results/output.txt" | head -40 || true
		for log in "$run"/*.log; do
			echo "--- $log"
			grep -v 'level=DEBUG' "$log" | tail -40 || true
		done
		echo "conformance: the newest suite failed against $deployment; report in $results (kept)" >&2
		BERTH_CONFORMANCE_KEEP=1
		exit 1
	fi
}

# auth_env: the login of the suites (OCI_USERNAME, OCI_PASSWORD), none
# without authentication.
auth_env=()
ADMIN_USER=conformance
ADMIN_PASS="conformance admin $$ $(date +%s%N)"

# setup_auth <mode> <log>: in token mode, the admin the suites log in as,
# made with the CLI on the deployment's schema (once a replica has migrated
# it). log is a replica's: it must say that it serves in that mode.
setup_auth() {
	auth_env=()
	if ! grep -q "msg=\"berth serving\" .* auth=$1\$" "$2"; then
		echo "conformance: $2 does not say auth=$1:" >&2
		grep 'berth serving' "$2" >&2
		exit 1
	fi
	[ "$1" = token ] || return 0
	"$CACHE/berth" user add "$ADMIN_USER" --admin --password-stdin --database-url "$schema_url" \
		<<<"$ADMIN_PASS" >/dev/null
	auth_env=(OCI_USERNAME="$ADMIN_USER" OCI_PASSWORD="$ADMIN_PASS")
	echo "conformance: --auth token; the suites log in as the admin $ADMIN_USER (berth user add --admin)." \
		"The newest suite reuses a token per repository and method, which for a mount lacks pull on from=:" \
		"Berth opens an upload instead (202), and the suite skips what follows the mount"
}

# single <name> <auth mode>: one replica on the filesystem.
single() {
	local name=$1 mode=$2
	new_schema
	start_berth "$run/$name.log" --database-url "$schema_url" --auth "$mode"
	setup_auth "$mode" "$run/$name.log"
	run_suite "$name" "http://$addr"
	run_latest "$name" "$addr"
}

# replicas <name> <auth mode>: three replicas on one database and one blob
# store, round robin.
replicas() {
	local name=$1 mode=$2 i storage backends=()
	new_schema
	if [ -n "${BERTH_TEST_S3_ENDPOINT:-}" ]; then
		storage=(--storage s3 --s3-endpoint "$BERTH_TEST_S3_ENDPOINT" --s3-bucket "$BERTH_TEST_S3_BUCKET"
			--s3-prefix "conformance-$$-$name/" --s3-force-path-style)
		export AWS_ACCESS_KEY_ID=$BERTH_TEST_S3_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$BERTH_TEST_S3_SECRET_KEY
		echo "conformance: $name: replicas share the S3 bucket $BERTH_TEST_S3_BUCKET at $BERTH_TEST_S3_ENDPOINT"
	else
		storage=(--storage-dir "$run/shared-blobs-$name")
		echo "conformance: $name: no S3 server given (BERTH_TEST_S3_ENDPOINT); replicas share a directory"
	fi
	# One at a time: the first migrates the schema (and in token mode makes
	# the signing key the others load).
	for i in 1 2 3; do
		start_berth "$run/$name$i.log" --database-url "$schema_url" --auth "$mode" "${storage[@]}"
		backends+=("http://$addr")
	done
	setup_auth "$mode" "$run/${name}3.log"
	# rrproxy keeps the client's Host: the token service's URL in the
	# challenges is the proxy's, so token requests are spread as well.
	"$CACHE/rrproxy" -listen 127.0.0.1:0 "${backends[@]}" >"$run/rrproxy-$name.log" 2>&1 &
	pids+=($!)
	wait_for "$run/rrproxy-$name.log" 'rrproxy listening on \(.*\)' $!
	run_suite "$name" "http://$found"
	run_latest "$name" "$found"
}

single single none
replicas replicas none
single single-token token
replicas replicas-token token

if [ -n "$latest_missing" ]; then
	echo "conformance: the 2023 suite passed; !!! the newest suite was NOT run: $latest_missing" >&2
else
	echo "conformance: all runs passed"
fi
