#!/usr/bin/env bash
# Starts and stops a local S3 server for the tests of blobstore.S3: versitygw
# (Apache-2.0) with its posix backend, on a free port of 127.0.0.1.
#
#	eval "$(scripts/versitygw.sh start DIR)"   # exports BERTH_TEST_S3_*, VERSITYGW_PID
#	scripts/versitygw.sh stop DIR
#
# start installs versitygw into $BERTH_CACHE_DIR/bin (default: .cache/bin
# of the repository) unless it is there (the first build takes a minute or
# two), keeps its data under DIR/data and its log in DIR/versitygw.log,
# creates the bucket "berth-test" and prints the export lines on stdout;
# everything else goes to stderr, so the output can be eval'ed.
set -euo pipefail

VGW_MODULE=github.com/versity/versitygw/cmd/versitygw
VGW_VERSION=v1.8.0
BUCKET=berth-test
ACCESS_KEY=berthtest
SECRET_KEY=berthtestsecret

usage() {
	echo "usage: $0 start|stop DIR" >&2
	exit 2
}
[ $# -eq 2 ] || usage
cmd=$1
dir=$2
log() { echo "versitygw.sh: $*" >&2; }
repo=$(cd "$(dirname "$0")/.." && pwd)

# answers reports whether something serves HTTP on port $1. Any status will
# do: an unsigned request gets 403, and that is an answer.
answers() {
	curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$1/"
}

start() {
	# The version is part of the path, so changing VGW_VERSION rebuilds.
	cache=${BERTH_CACHE_DIR:-$repo/.cache}
	mkdir -p "$cache/bin"
	cache=$(cd "$cache" && pwd)
	bin=$cache/bin/versitygw-$VGW_VERSION
	if [ ! -x "$bin" ]; then
		log "installing $VGW_MODULE@$VGW_VERSION into $cache/bin (takes a minute or two)"
		tmp=$(mktemp -d)
		# Built aside and renamed, so that an interrupted build leaves no
		# binary behind. The caller's GOFLAGS are for Berth, not for this.
		GOFLAGS= GOBIN=$tmp go install "$VGW_MODULE@$VGW_VERSION" >&2
		mv "$tmp/versitygw" "$bin"
		rm -rf "$tmp"
	fi

	mkdir -p "$dir/data/$BUCKET"
	dir=$(cd "$dir" && pwd)
	if [ -f "$dir/versitygw.pid" ] && kill -0 "$(cat "$dir/versitygw.pid")" 2>/dev/null; then
		log "already running in $dir (pid $(cat "$dir/versitygw.pid")); stop it first"
		exit 1
	fi

	# A random port that nothing answers on; if versitygw still fails to
	# bind it (taken meanwhile), try another.
	pid=
	for _ in 1 2 3 4 5; do
		port=$((20000 + RANDOM % 40000))
		answers "$port" && continue
		# --disableotmp: with O_TMPFILE, the posix backend answers a PUT
		# 409 ExistingObjectIsDirectory now and then while other keys of
		# the same directory are deleted (versity/versitygw#1988); the
		# tests upload and delete upload parts side by side all the time.
		"$bin" --access "$ACCESS_KEY" --secret "$SECRET_KEY" --port "127.0.0.1:$port" --quiet \
			posix --disableotmp "$dir/data" >"$dir/versitygw.log" 2>&1 </dev/null &
		pid=$!
		for _ in $(seq 100); do
			answers "$port" && break
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		if answers "$port"; then
			break
		fi
		kill "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
		pid=
	done
	if [ -z "$pid" ]; then
		log "versitygw did not start; its log:"
		cat "$dir/versitygw.log" >&2
		exit 1
	fi
	echo "$pid" >"$dir/versitygw.pid"

	# The posix backend treats every directory of its root as a bucket;
	# check that the gateway sees the one made above.
	# (curl before 8.x does not send the payload hash S3 requires with
	# SigV4, hence the header: the SHA-256 of an empty body.)
	endpoint=http://127.0.0.1:$port
	if ! curl -sf --max-time 5 --aws-sigv4 "aws:amz:us-east-1:s3" --user "$ACCESS_KEY:$SECRET_KEY" \
		-H "x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" \
		"$endpoint/" | grep -q "<Name>$BUCKET</Name>"; then
		log "versitygw does not list bucket $BUCKET"
		kill "$pid"
		exit 1
	fi
	log "serving $dir/data on $endpoint (pid $pid)"

	cat <<EOF
export BERTH_TEST_S3_ENDPOINT=$endpoint
export BERTH_TEST_S3_BUCKET=$BUCKET
export BERTH_TEST_S3_ACCESS_KEY=$ACCESS_KEY
export BERTH_TEST_S3_SECRET_KEY=$SECRET_KEY
export VERSITYGW_PID=$pid
EOF
}

stop() {
	pidfile=$dir/versitygw.pid
	if [ ! -f "$pidfile" ]; then
		log "not running in $dir"
		return 0
	fi
	pid=$(cat "$pidfile")
	# Only the process this script started: the pid file names it, and it
	# must still be versitygw (pids are reused).
	if kill -0 "$pid" 2>/dev/null && grep -q versitygw "/proc/$pid/cmdline" 2>/dev/null; then
		kill "$pid"
		for _ in $(seq 50); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
	fi
	rm -f "$pidfile"
}

case $cmd in
start) start ;;
stop) stop ;;
*) usage ;;
esac
