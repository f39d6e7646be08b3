# Conveniences; README.md gives the plain commands these run.
.PHONY: run test conformance clients build

run:
	go run ./cmd/berth serve

test:
	scripts/test.sh

conformance:
	scripts/conformance.sh

clients:
	scripts/clients.sh

build:
	go build -o berth ./cmd/berth

# Berth against CNCF Distribution on this machine; writes bench/results.md.
.PHONY: bench bench-quick

bench:
	scripts/bench.sh

bench-quick:
	scripts/bench.sh --quick
