#!/usr/bin/env bash
# The whole test suite: what README.md calls "run the tests" and what CI
# runs. Needs Go and a PostgreSQL server (BERTH_TEST_DATABASE_URL, default
# the local server's "test" database); installs everything else it needs.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== go vet"
go vet ./...
echo "== unit, integration and race tests (real PostgreSQL)"
go test -race -count=1 ./...
echo "== OCI conformance suite against a live berth serve"
scripts/conformance.sh
echo "== real clients: crane, skopeo, regctl, oras (and docker with SKIP_DOCKER=0)"
SKIP_DOCKER=${SKIP_DOCKER:-1} scripts/clients.sh
echo "== all tests passed"
