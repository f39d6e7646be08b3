#!/usr/bin/env bash
# Installs the reference registry (CNCF Distribution) into the cache, if
# missing or another version, and prints its path. Used by the benchmarks
# and by the tests that need a real upstream or a real storage tree of the
# reference registry (pull-through cache, import): scripts/test.sh exports
# the path as BERTH_TEST_REGISTRY.
#
#   BERTH_CACHE_DIR   where binaries are kept (default ./.cache)
set -euo pipefail
cd "$(dirname "$0")/.."

DIST_MODULE=github.com/distribution/distribution/v3
DIST_VERSION=v3.1.2
CACHE=${BERTH_CACHE_DIR:-$PWD/.cache}
mkdir -p "$CACHE/bin"

registry=$CACHE/bin/registry
if ! go version -m "$registry" 2>/dev/null | grep -q "mod[[:space:]]*$DIST_MODULE[[:space:]]*$DIST_VERSION"; then
	echo "installing $DIST_MODULE/cmd/registry@$DIST_VERSION into $CACHE/bin" >&2
	GOBIN=$CACHE/bin go install "$DIST_MODULE/cmd/registry@$DIST_VERSION"
fi
echo "$registry"
