#!/usr/bin/env bash
# The whole test suite: what README.md calls "run the tests" and what CI
# runs. Needs Go and a PostgreSQL server (BERTH_TEST_DATABASE_URL, default
# the local server's "test" database); installs and starts everything else
# it needs: a local S3 server (versitygw), the conformance suite, the
# registry clients, headless Chromium for the web interface's browser test.
set -euo pipefail
cd "$(dirname "$0")/.."

s3dir=$(mktemp -d)
trap 'scripts/versitygw.sh stop "$s3dir" >/dev/null 2>&1 || true; rm -rf "$s3dir"' EXIT
echo "== S3 server for the tests (versitygw)"
eval "$(scripts/versitygw.sh start "$s3dir")"

echo "== headless Chromium for the web interface's browser test (cmd/berth TestUIBrowser)"
# Debian's chromium; fonts-dejavu-core so that pages have text to show.
# type -P finds the program only, as in scripts/clients.sh.
if ! type -P chromium >/dev/null || [ ! -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]; then
	echo "installing with apt: chromium fonts-dejavu-core"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq chromium fonts-dejavu-core >/dev/null
fi
chromium --version

echo "== the reference registry, as an upstream and a storage tree to import (BERTH_TEST_REGISTRY)"
BERTH_TEST_REGISTRY=$(scripts/registry.sh)
export BERTH_TEST_REGISTRY

echo "== go vet"
go vet ./...
echo "== unit, integration and race tests (real PostgreSQL, real S3)"
go test -race -count=1 ./...
echo "== OCI conformance suite: one replica, and three behind a round-robin proxy on S3"
scripts/conformance.sh
echo "== real clients: crane, skopeo, regctl, oras (and docker with SKIP_DOCKER=0)"
SKIP_DOCKER=${SKIP_DOCKER:-1} scripts/clients.sh
echo "== real clients logging in: basic and token authentication, refusals, anonymous, revocation across replicas"
SKIP_DOCKER=${SKIP_DOCKER:-1} scripts/auth-clients.sh
echo "== all tests passed"
