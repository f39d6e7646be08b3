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
