#!/usr/bin/env bash
# Benchmarks Berth against the reference registry, CNCF Distribution
# (github.com/distribution/distribution/v3/cmd/registry, filesystem
# storage), on this machine, in one run, and writes bench/results.md with
# the numbers, the ratios, the machine and the versions (tools/bench).
#
#   scripts/bench.sh            full run (100,000 tags, 256 MiB blobs...)
#   scripts/bench.sh --quick    scaled down, a few minutes
#
# Any other argument goes to the bench tool, e.g.
#   scripts/bench.sh --quick -only 'manifest/' -out /tmp/r.md
#   scripts/bench.sh -list
#   scripts/bench.sh --quick -profile 'manifest/tag/c32'   (perf summaries in bench/profiles/)
#   scripts/bench.sh -only 'manifest/put' -registries berth   (64 concurrent
#       PUTs of 4 MiB manifests: peak RSS, 201/429/5xx; add
#       -berth-args=--manifest-budget=1GiB to see it without the budget)
#
# Environment:
#   BERTH_TEST_DATABASE_URL  PostgreSQL for Berth (default: the local
#                            server's "test" database); the run creates its
#                            own schema and drops it afterwards.
#   BERTH_CACHE_DIR          where binaries are kept (default ./.cache)
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${BERTH_CACHE_DIR:-$PWD/.cache}
mkdir -p "$CACHE/bin"

args=()
for a in "$@"; do
	case $a in
	--quick) args+=(-quick) ;;
	*) args+=("$a") ;;
	esac
done

# The reference registry, from the Go module proxy, if missing or another
# version.
registry=$(scripts/registry.sh)

go build -o "$CACHE/berth" ./cmd/berth
go build -o "$CACHE/bench" ./tools/bench

exec "$CACHE/bench" -berth "$CACHE/berth" -registry "$registry" "${args[@]}"
