#!/usr/bin/env bash
# Drives the registry clients people really use -- crane, skopeo, regctl,
# oras and docker -- against a live `berth serve`, step by step. Each step
# prints "ok: <what>"; the first that fails stops the run with the client's
# debug output and the tail of berth's debug log, so it can be re-run once
# the fault is fixed. Read the test_* functions as a how-to for each client.
#
# Missing clients are installed first: skopeo, docker.io and jq with
# apt; crane, regctl and oras with `go install` into $BERTH_CACHE_DIR/bin
# (pinned versions below).
#
# Environment:
#   BERTH_TEST_DATABASE_URL  PostgreSQL to use (default: the local server's
#                            "test" database); the run gets its own schema,
#                            dropped afterwards.
#   BERTH_CACHE_DIR          where berth and the Go-built clients are kept
#                            (default ./.cache, binaries in its bin/)
#   SKIP_DOCKER=1            leave docker out (no dockerd is started)
#   BERTH_BIN                a berth binary to test instead of building
#                            ./cmd/berth into $BERTH_CACHE_DIR
set -euo pipefail
cd "$(dirname "$0")/.."

CRANE_VERSION=v0.22.1  # github.com/google/go-containerregistry
REGCTL_VERSION=v0.11.7 # github.com/regclient/regclient
ORAS_VERSION=v1.2.3    # oras.land/oras
CACHE=${BERTH_CACHE_DIR:-$PWD/.cache}
BIN=$CACHE/bin
DB_URL=${BERTH_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test?sslmode=disable}
SKIP_DOCKER=${SKIP_DOCKER:-0}
FIXTURES=$PWD/testdata/clients
mkdir -p "$BIN"
CACHE=$(cd "$CACHE" && pwd) BIN=$CACHE/bin
export PATH="$BIN:$PATH"

run=          # temp dir of this run: logs, configs, files pushed and pulled
schema=       # the PostgreSQL schema berth runs on
berth_pid=    # `berth serve`
upstream_pid= # the reference registry behind the pull-through cache
BERTH_DB=     # the database URL berth serves, for `berth proxy add`
dockerd_pid=  # the private dockerd
REG=          # host:port berth listens on
last_cmd=     # the last client command run by `must` or `must_fail`

# --- reporting --------------------------------------------------------------

ok() { echo "ok: $*"; }

# fail <message>: shows what went wrong, the last client command with its
# output (stderr holds the client's debug log) and berth's log, and stops.
fail() {
	{
		echo "FAIL: $*"
		if [ -n "$last_cmd" ]; then
			echo "--- last client command: $last_cmd"
			echo "--- its stdout (last 40 lines)"
			tail -n 40 "$run/out" 2>/dev/null || true
			echo "--- its stderr, the client's debug log (last 80 lines)"
			tail -n 80 "$run/err" 2>/dev/null || true
		fi
		local log
		for log in ${run:+"$run"/berth*.log}; do
			[ -f "$log" ] || continue
			echo "--- berth log $log (last 40 lines)"
			tail -n 40 "$log"
		done
	} >&2
	exit 1
}

# must <what> <command...>: runs a client command with its stdout in
# $run/out and its stderr in $run/err; stops the run if it fails.
must() {
	local what=$1
	shift
	last_cmd="$*"
	"$@" >"$run/out" 2>"$run/err" || fail "$what (exit $?)"
}

# must_fail <what> <error text> <command...>: the command must fail, with
# the error text (e.g. the registry's error code) in its output.
must_fail() {
	local what=$1 text=$2
	shift 2
	last_cmd="$*"
	if "$@" >"$run/out" 2>"$run/err"; then
		fail "$what: the command succeeded, it should have failed"
	fi
	grep -q -- "$text" "$run/out" "$run/err" || fail "$what: the error does not say $text"
}

# check <what> <test...>: a condition that must hold.
check() {
	local what=$1
	shift
	"$@" || fail "$what"
}

out() { cat "$run/out"; }

# lacks <text> <file>: the file does not contain the text.
lacks() { ! grep -q -- "$1" "$2"; }

# in_dir <dir> <command...>: runs a command in another directory.
in_dir() { (cd "$1" && shift && "$@"); }

# The clients, with debug logging on (it goes to $run/err, shown on failure)
# and their configuration kept inside $run. Everything that matters for
# talking to a plain-HTTP registry is written at each call instead.
crane() { command crane --verbose "$@"; }
skopeo() { command skopeo --debug --policy "$run/policy.json" "$@"; }
regctl() { command regctl --verbosity trace "$@"; }
oras() { command oras "$1" --debug "${@:2}"; } # --debug is a flag of each command

# --- setup -------------------------------------------------------------------

# go_install <binary> <package> <version>: `go install`s a Go-built client
# into $BIN unless the binary there was already built from that version.
go_install() {
	local bin=$1 pkg=$2 version=$3
	if [ -x "$BIN/$bin" ] &&
		[ "$(go version -m "$BIN/$bin" | awk '$1 == "mod" { print $3 }')" = "$version" ]; then
		return
	fi
	echo "installing $pkg@$version into $BIN"
	GOBIN=$BIN go install "$pkg@$version" || fail "go install $pkg@$version failed"
}

install_clients() {
	local pkgs=()
	# type -P looks for the program only: `command -v skopeo` would find
	# the wrapper function above and never install skopeo.
	type -P skopeo >/dev/null || pkgs+=(skopeo)
	type -P jq >/dev/null || pkgs+=(jq)
	if [ "$SKIP_DOCKER" != 1 ]; then
		type -P docker >/dev/null && type -P dockerd >/dev/null || pkgs+=(docker.io)
	fi
	if [ ${#pkgs[@]} -gt 0 ]; then
		echo "installing with apt: ${pkgs[*]}"
		export DEBIAN_FRONTEND=noninteractive
		apt-get update -qq || fail "apt-get update failed"
		apt-get install -y -qq "${pkgs[@]}" >/dev/null || fail "apt-get install ${pkgs[*]} failed"
	fi
	go_install crane github.com/google/go-containerregistry/cmd/crane "$CRANE_VERSION"
	go_install regctl github.com/regclient/regclient/cmd/regctl "$REGCTL_VERSION"
	go_install oras oras.land/oras/cmd/oras "$ORAS_VERSION"
	local docker="docker left out"
	[ "$SKIP_DOCKER" = 1 ] || docker="dockerd $(dockerd --version | cut -d' ' -f3 | tr -d ,)"
	ok "clients installed: crane $CRANE_VERSION, regctl $REGCTL_VERSION, oras $ORAS_VERSION," \
		"$(command skopeo --version), $docker"
}

# stop <pid>: SIGTERM, then SIGKILL if still there after 20 seconds.
stop() {
	kill "$1" 2>/dev/null || return 0
	for _ in $(seq 200); do
		kill -0 "$1" 2>/dev/null || break
		sleep 0.1
	done
	kill -9 "$1" 2>/dev/null
	wait "$1" 2>/dev/null
}

cleanup() {
	local status=$?
	set +e
	if [ -n "$dockerd_pid" ]; then
		stop "$dockerd_pid"
		# the containerd that dockerd started, should it have outlived it
		local containerd=$run/docker/exec/containerd/containerd.pid
		[ -s "$containerd" ] && stop "$(cat "$containerd")"
	fi
	[ -n "$berth_pid" ] && stop "$berth_pid"
	[ -n "$upstream_pid" ] && stop "$upstream_pid"
	[ -n "$schema" ] && psql "$DB_URL" -qc "DROP SCHEMA $schema CASCADE"
	if [ -n "$run" ]; then
		# dockerd unmounts its layers when it stops; anything left over must
		# not make rm walk into a mount.
		grep -o " $run/[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null
		rm -rf "$run"
	fi
	[ $status -eq 0 ] && echo "clients: all steps passed in ${SECONDS}s"
	return $status
}

start_berth() {
	local berth=${BERTH_BIN:-$CACHE/berth}
	if [ -z "${BERTH_BIN:-}" ]; then
		go build -o "$berth" ./cmd/berth || fail "go build ./cmd/berth failed"
	fi
	schema=clients_$$_$(date +%s)
	export PGOPTIONS="-c client_min_messages=warning"
	psql "$DB_URL" -qc "CREATE SCHEMA $schema"
	local url
	case "$DB_URL" in *\?*) url="$DB_URL&search_path=$schema" ;; *) url="$DB_URL?search_path=$schema" ;; esac
	BERTH_DB=$url
	"$berth" serve --listen 127.0.0.1:0 --database-url "$url" --data-dir "$run/data" \
		--log-level debug >"$run/berth.log" 2>&1 &
	berth_pid=$!
	for _ in $(seq 300); do
		# berth creates its log itself, maybe after the first look.
		[ -e "$run/berth.log" ] && REG=$(sed -n 's/.*msg="berth serving" addr=\([^ ]*\).*/\1/p' "$run/berth.log")
		[ -n "$REG" ] && break
		kill -0 "$berth_pid" 2>/dev/null || fail "berth exited at start"
		sleep 0.1
	done
	[ -n "$REG" ] || fail "berth did not start listening"
	ok "berth serving on http://$REG (schema $schema, log $run/berth.log)"
}

# A dockerd of our own: its own data, state and socket under $run, no
# networking set up (nothing is run, images are only pushed and pulled).
# Docker treats registries on 127.0.0.0/8 as insecure (plain HTTP) by itself.
# Berth is its Docker Hub mirror (registry-mirrors), which only Docker Hub
# names use: test_proxy pulls one through an empty-prefix proxy.
start_dockerd() {
	mkdir -p "$run/docker"
	export DOCKER_HOST=unix://$run/docker/docker.sock
	dockerd --iptables=false --ip6tables=false --bridge=none --registry-mirror "http://$REG" \
		--data-root "$run/docker/root" --exec-root "$run/docker/exec" \
		--pidfile "$run/docker/docker.pid" -H "$DOCKER_HOST" \
		>"$run/docker/dockerd.log" 2>&1 &
	dockerd_pid=$!
	for _ in $(seq 120); do
		docker info >/dev/null 2>&1 && break
		kill -0 "$dockerd_pid" 2>/dev/null || { tail -20 "$run/docker/dockerd.log"; fail "dockerd exited at start"; }
		sleep 0.5
	done
	docker info >/dev/null 2>&1 || { tail -20 "$run/docker/dockerd.log"; fail "dockerd did not start"; }
	ok "dockerd $(docker version -f '{{.Server.Version}}') on $DOCKER_HOST"
}

# layer <dir> <tarball>: a layer tarball of a directory's files.
layer() {
	tar -C "$1" --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -cf "$2" .
}

# file_in_layer <layer blob> <path>: a file's content in a layer tarball,
# compressed or not.
file_in_layer() {
	tar -xOf "$1" "$2" 2>/dev/null || tar -xOf "$1" "./$2"
}

# --- the pull-through cache: crane, skopeo and docker pull through Berth ---

# A reference registry on a free port is the upstream; `berth proxy add`
# makes Berth's hub/* a cache of its team/*.
test_proxy() {
	local berth=${BERTH_BIN:-$CACHE/berth} registry port up
	registry=$(scripts/registry.sh) || fail "scripts/registry.sh failed"
	port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
	up=127.0.0.1:$port
	mkdir -p "$run/upstream"
	printf 'version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: %s\n' \
		"$run/upstream/data" "$up" >"$run/upstream/config.yml"
	"$registry" serve "$run/upstream/config.yml" >"$run/upstream.log" 2>&1 &
	upstream_pid=$!
	for _ in $(seq 100); do
		curl -fs "http://$up/v2/" >/dev/null && break
		sleep 0.1
	done
	curl -fs "http://$up/v2/" >/dev/null || fail "the reference registry did not start"
	mkdir -p "$run/proxied"
	cp "$FIXTURES/hello.txt" "$run/proxied/"
	layer "$run/proxied" "$run/proxied.tar"
	must "crane append to the upstream" crane append --insecure -f "$run/proxied.tar" -t "$up/team/app:v1"
	must "crane digest on the upstream" crane digest --insecure "$up/team/app:v1"
	local digest
	digest=$(out)
	must "berth proxy add" "$berth" proxy add hub "http://$up" --remote-prefix team --ttl 1m --database-url "$BERTH_DB"
	ok "$(out)"
	sleep 1.2 # replicas read the proxies again every second

	must "crane pull through the cache" crane pull --insecure "$REG/hub/app:v1" "$run/proxy-pull.tar"
	mkdir -p "$run/proxy-pull"
	tar -C "$run/proxy-pull" -xf "$run/proxy-pull.tar"
	check "crane pull through the cache: hello.txt differs" \
		cmp -s <(file_in_layer "$run/proxy-pull/$(jq -r '.[0].Layers[0]' "$run/proxy-pull/manifest.json")" hello.txt) "$FIXTURES/hello.txt"
	must "crane digest through the cache" crane digest --insecure "$REG/hub/app:v1"
	check "the cache serves $(out), the upstream has $digest" [ "$(out)" = "$digest" ]
	ok "crane pull through the cache: $REG/hub/app:v1 = $up/team/app:v1 ($digest)"

	must "skopeo copy through the cache" skopeo copy --src-tls-verify=false "docker://$REG/hub/app:v1" "oci:$run/proxy-oci:v1"
	# skopeo converts the Docker manifest to OCI: the layer, not the digest, is compared.
	local m l
	m=$(jq -r '.manifests[0].digest' "$run/proxy-oci/index.json")
	l=$(jq -r '.layers[0].digest' "$run/proxy-oci/blobs/sha256/${m#sha256:}")
	check "skopeo through the cache: hello.txt differs" \
		cmp -s <(file_in_layer "$run/proxy-oci/blobs/sha256/${l#sha256:}" hello.txt) "$FIXTURES/hello.txt"
	ok "skopeo copy through the cache into an OCI layout: the layer holds the pushed file"

	if [ "$SKIP_DOCKER" != 1 ]; then
		must "docker pull through the cache" docker pull "$REG/hub/app:v1"
		ok "docker pull through the cache: $REG/hub/app:v1"
	fi

	must_fail "crane push into the cache" DENIED crane copy --insecure "$REG/hub/app:v1" "$REG/hub/app:v2"
	ok "crane push into the cache: refused (DENIED)"

	# A Docker Hub mirror: dockerd's registry-mirrors asks Berth for
	# library/<name>, unprefixed, so the proxy has the empty prefix (it
	# makes every other repository a cache: this step comes last). The
	# upstream plays Docker Hub; there is no internet here, so a pull that
	# succeeds came through the mirror.
	must "crane copy to the upstream's library/" crane copy --insecure "$up/team/app:v1" "$up/library/berthmirror:v1"
	must "berth proxy add \"\"" "$berth" proxy add "" "http://$up" --database-url "$BERTH_DB"
	ok "$(out)"
	sleep 1.2
	must "crane digest of library/berthmirror through the mirror" crane digest --insecure "$REG/library/berthmirror:v1"
	check "the mirror serves $(out), the upstream has $digest" [ "$(out)" = "$digest" ]
	if [ "$SKIP_DOCKER" != 1 ]; then
		must "docker pull berthmirror:v1 (Docker Hub's library/berthmirror, through registry-mirrors)" docker pull berthmirror:v1
		must "docker image inspect" docker image inspect -f '{{join .RepoDigests " "}}' berthmirror:v1
		check "docker pulled berthmirror:v1 as $(out), want docker.io/library/berthmirror@$digest" \
			grep -q "berthmirror@$digest" <<<"$(out)"
		ok "docker pull berthmirror:v1 through Berth as dockerd's registry mirror (empty-prefix proxy): $(out)"
	fi
	must "berth proxy delete \"\"" "$berth" proxy delete "" --database-url "$BERTH_DB"
}

# --- crane: push, pull, list, copy (cross-repository mount), delete ---------

test_crane() {
	local repo=$REG/clients/crane/hello copy=$REG/clients/crane/copy digest
	mkdir -p "$run/hello"
	cp "$FIXTURES/hello.txt" "$run/hello/"
	layer "$run/hello" "$run/hello.tar"

	# append to no base image = a new one-layer image, pushed to the tag.
	must "crane append" crane append --insecure -f "$run/hello.tar" -t "$repo:v1"
	must "crane digest" crane digest --insecure "$repo:v1"
	digest=$(out)
	ok "crane append: pushed $repo:v1 ($digest)"

	# pull writes a `docker save` tarball; the file in it must be ours.
	must "crane pull" crane pull --insecure "$repo:v1" "$run/crane-pull.tar"
	mkdir -p "$run/crane-pull"
	tar -C "$run/crane-pull" -xf "$run/crane-pull.tar"
	local blob
	blob=$run/crane-pull/$(jq -r '.[0].Layers[0]' "$run/crane-pull/manifest.json")
	check "crane pull: hello.txt in the pulled layer differs from the pushed one" \
		cmp -s <(file_in_layer "$blob" hello.txt) "$FIXTURES/hello.txt"
	ok "crane pull: the pulled layer holds the pushed file"

	must "crane ls" crane ls --insecure "$repo"
	check "crane ls does not list v1" grep -qx v1 "$run/out"
	ok "crane ls: $(out | paste -sd' ')"

	must "crane catalog" crane catalog --insecure "$REG"
	check "crane catalog does not list clients/crane/hello" grep -qx clients/crane/hello "$run/out"
	ok "crane catalog lists clients/crane/hello"

	# Within one registry, crane copies blobs by mounting them from the
	# source repository: POST /v2/<to>/blobs/uploads/?mount=<digest>&from=<from> -> 201.
	must "crane copy" crane copy --insecure "$repo:v1" "$copy:v1"
	check "crane copy did not mount the blobs (no 'mounted blob' in its log)" \
		grep -q "mounted blob" "$run/err"
	check "crane copy uploaded a blob instead of mounting it" \
		lacks "pushed blob" "$run/err"
	must "crane digest of the copy" crane digest --insecure "$copy:v1"
	check "the copy has digest $(out), not $digest" [ "$(out)" = "$digest" ]
	ok "crane copy: $copy:v1 has the same digest, blobs mounted across repositories"

	must "crane delete" crane delete --insecure "$copy@$digest"
	must_fail "crane manifest of the deleted manifest" MANIFEST_UNKNOWN \
		crane manifest --insecure "$copy@$digest"
	must_fail "crane manifest of the tag of the deleted manifest" MANIFEST_UNKNOWN \
		crane manifest --insecure "$copy:v1"
	must "crane manifest of the source after deleting the copy" crane manifest --insecure "$repo@$digest"
	ok "crane delete: $copy@$digest and its tag are gone, $repo:v1 is intact"
}

# --- multi-architecture indexes, copied by skopeo and regctl ----------------

declare -A child # architecture -> digest of its image, set by push_index

# push_index <repo> <oci|docker>: pushes one image for linux/amd64 and one
# for linux/arm64 (<repo>:amd64, <repo>:arm64), and <repo>:index, an OCI
# index or a Docker manifest list of the two, all made by crane. Sets
# index_digest and child.
push_index() {
	local repo=$1 kind=$2 arch
	local empty_image=() empty_index=()
	[ "$kind" = oci ] && empty_image=(--oci-empty-base) || empty_index=(--docker-empty-base)
	for arch in amd64 arm64; do
		mkdir -p "$run/arch-$arch"
		echo "built for linux/$arch" >"$run/arch-$arch/arch.txt"
		layer "$run/arch-$arch" "$run/arch-$arch.tar"
		must "crane append ($kind, $arch)" crane append --insecure "${empty_image[@]}" \
			-f "$run/arch-$arch.tar" -t "$repo:$arch"
		must "crane mutate --set-platform linux/$arch" crane mutate --insecure \
			--set-platform "linux/$arch" -t "$repo:$arch" "$repo:$arch"
		must "crane digest ($arch)" crane digest --insecure "$repo:$arch"
		child[$arch]=$(out)
	done
	must "crane index append ($kind)" crane index append --insecure "${empty_index[@]}" \
		-m "$repo:amd64" -m "$repo:arm64" -t "$repo:index"
	must "crane digest of the index" crane digest --insecure "$repo:index"
	index_digest=$(out)

	local type=application/vnd.oci.image.index.v1+json
	[ "$kind" = docker ] && type=application/vnd.docker.distribution.manifest.list.v2+json
	must "crane manifest of the index" crane manifest --insecure "$repo:index"
	check "$repo:index is not a $type listing linux/amd64 then linux/arm64" \
		[ "$(jq -r '[.mediaType, (.manifests[] | .platform.os + "/" + .platform.architecture + "=" + .digest)] | join(" ")' "$run/out")" \
		= "$type linux/amd64=${child[amd64]} linux/arm64=${child[arm64]}" ]
	must "crane digest --platform linux/arm64" crane digest --insecure --platform linux/arm64 "$repo:index"
	check "the index resolves linux/arm64 to $(out), not ${child[arm64]}" [ "$(out)" = "${child[arm64]}" ]
	ok "crane index append: $type $repo:index ($index_digest) of linux/amd64 (${child[amd64]}) and linux/arm64 (${child[arm64]})"
}

# check_index_copy <repo>: <repo>:index must hold the index with the images
# of child, each pullable by digest and for its architecture.
check_index_copy() {
	local repo=$1 arch
	must "crane manifest of the copied index" crane manifest --insecure "$repo:index"
	check "the index copied to $repo lists $(jq -c '[.manifests[].digest]' "$run/out")" \
		[ "$(jq -r '[.manifests[].digest] | join(" ")' "$run/out")" = "${child[amd64]} ${child[arm64]}" ]
	for arch in amd64 arm64; do
		must "crane manifest of the $arch image in $repo" crane manifest --insecure "$repo@${child[$arch]}"
		must "crane config of the $arch image in $repo" crane config --insecure "$repo@${child[$arch]}"
		check "the $arch image in $repo says it is for $(jq -r .architecture "$run/out")" \
			[ "$(jq -r .architecture "$run/out")" = "$arch" ]
	done
}

test_multiarch() {
	local kind repo copy index_digest
	# regctl: plain HTTP is a per-registry setting in its config file.
	must "regctl registry set" regctl registry set --tls disabled "$REG"

	for kind in docker oci; do
		repo=$REG/clients/multiarch/$kind
		push_index "$repo" "$kind"

		# regctl copies the index and every image in it, unchanged.
		copy=$REG/clients/multiarch/regctl-$kind
		must "regctl image copy ($kind index)" regctl image copy "$repo:index" "$copy:index"
		must "crane digest of the regctl copy" crane digest --insecure "$copy:index"
		check "regctl's copy of the $kind index has digest $(out), not $index_digest" [ "$(out)" = "$index_digest" ]
		check_index_copy "$copy"
		ok "regctl image copy: $copy:index has the same digest, both images pullable by digest"

		# skopeo: --all copies the index and every image in it, and
		# --preserve-digests makes it fail rather than change a digest. But
		# skopeo 1.9 (containers/image 5.23) re-encodes an OCI index with its
		# own types, which lack the descriptors' artifactType (image-spec 1.1)
		# that crane writes, so it cannot keep that index as it is, wherever
		# it copies it (even to an OCI layout): only the Docker list keeps its
		# digest there; of the OCI index, the images must be the same.
		copy=$REG/clients/multiarch/skopeo-$kind
		local preserve=()
		[ "$kind" = docker ] && preserve=(--preserve-digests)
		must "skopeo copy --all ($kind index)" skopeo copy --all "${preserve[@]}" \
			--src-tls-verify=false --dest-tls-verify=false \
			"docker://$repo:index" "docker://$copy:index"
		must "crane digest of the skopeo copy" crane digest --insecure "$copy:index"
		local copied
		copied=$(out)
		check_index_copy "$copy"
		if [ ${#preserve[@]} -gt 0 ]; then
			check "skopeo's copy of the $kind index has digest $copied, not $index_digest" [ "$copied" = "$index_digest" ]
			ok "skopeo copy --all --preserve-digests: $copy:index has the same digest, both images pullable by digest"
		else
			ok "skopeo copy --all: $copy:index (re-encoded by skopeo as $copied) lists the same images, both pullable by digest"
		fi
	done
}

# --- docker: build, push, rmi, pull ------------------------------------------

test_docker() {
	local repo=$REG/clients/docker/hello id pushed
	# The legacy builder: BuildKit would want to reach the network.
	must "docker build" env DOCKER_BUILDKIT=0 docker build -t "$repo:v1" "$FIXTURES"
	must "docker inspect" docker image inspect -f '{{.Id}}' "$repo:v1"
	id=$(out)
	ok "docker build: $repo:v1 ($id)"

	must "docker push" docker push "$repo:v1"
	pushed=$(sed -n 's/^v1: digest: \(sha256:[0-9a-f]*\) size: .*/\1/p' "$run/out")
	check "docker push did not print the pushed digest" [ -n "$pushed" ]
	ok "docker push: $repo:v1 ($pushed)"

	must "docker rmi" docker rmi "$repo:v1"
	must_fail "docker inspect after rmi" "No such image" docker image inspect "$repo:v1"
	must "docker pull" docker pull "$repo:v1"
	must "docker inspect of the pulled image" docker image inspect "$repo:v1"
	check "the pulled image is $(jq -c '.[0] | [.Id, .RepoDigests]' "$run/out"), not $id from $repo@$pushed" \
		[ "$(jq -c '.[0] | [.Id, .RepoDigests]' "$run/out")" = "[\"$id\",[\"$repo@$pushed\"]]" ]
	ok "docker pull: same image id, RepoDigests $repo@$pushed"

	must "docker pull by digest" docker pull "$repo@$pushed"
	ok "docker pull by digest"

	# Pushing the same layers to another repository of the registry: docker
	# remembers where they are and mounts them from there.
	must "docker tag" docker tag "$repo:v1" "$REG/clients/docker/mounted:v1"
	must "docker push to a second repository" docker push "$REG/clients/docker/mounted:v1"
	check "docker push did not mount the layer from clients/docker/hello" \
		grep -q "Mounted from clients/docker/hello" "$run/out"
	check "docker push to the second repository gave another digest" grep -q "digest: $pushed " "$run/out"
	ok "docker push $REG/clients/docker/mounted:v1: layer mounted from clients/docker/hello"

	# The crane-made indexes: docker picks the image for the platform asked.
	local kind multi
	for kind in docker oci; do
		multi=$REG/clients/multiarch/$kind:index
		must "docker pull --platform linux/arm64 of the $kind index" docker pull --platform linux/arm64 "$multi"
		must "docker inspect of the arm64 image" docker image inspect -f '{{.Os}}/{{.Architecture}}' "$multi"
		check "docker pulled $(out) for linux/arm64" [ "$(out)" = linux/arm64 ]
		ok "docker pull --platform linux/arm64 of the $kind index $multi"
	done
}

# --- skopeo: inspect, list-tags, docker-archive and OCI layout round trips --

test_skopeo() {
	local repo=$REG/clients/skopeo/hello digest
	# The `docker save` tarball crane pulled is a docker-archive.
	must "skopeo copy docker-archive: -> berth" skopeo copy --dest-tls-verify=false \
		"docker-archive:$run/crane-pull.tar" "docker://$repo:v1"
	ok "skopeo copy docker-archive: -> docker://$repo:v1"

	must "skopeo inspect" skopeo inspect --tls-verify=false "docker://$repo:v1"
	digest=$(jq -r .Digest "$run/out")
	check "skopeo inspect shows no digest" [ "${digest#sha256:}" != "$digest" ]
	must "crane digest" crane digest --insecure "$repo:v1"
	check "skopeo inspect says $digest, crane digest $(out)" [ "$(out)" = "$digest" ]
	ok "skopeo inspect: $digest"

	must "skopeo list-tags" skopeo list-tags --tls-verify=false "docker://$repo"
	check "skopeo list-tags does not list v1" [ "$(jq -c .Tags "$run/out")" = '["v1"]' ]
	ok "skopeo list-tags: $(jq -c .Tags "$run/out")"

	# berth -> docker-archive: the file must come back.
	must "skopeo copy berth -> docker-archive:" skopeo copy --src-tls-verify=false \
		"docker://$repo:v1" "docker-archive:$run/skopeo.tar:clients/skopeo/hello:v1"
	mkdir -p "$run/skopeo-archive"
	tar -C "$run/skopeo-archive" -xf "$run/skopeo.tar"
	local blob
	blob=$run/skopeo-archive/$(jq -r '.[0].Layers[0]' "$run/skopeo-archive/manifest.json")
	check "hello.txt from the docker-archive differs from the pushed one" \
		cmp -s <(file_in_layer "$blob" hello.txt) "$FIXTURES/hello.txt"
	ok "skopeo copy docker://$repo:v1 -> docker-archive: holds the pushed file"

	# berth -> OCI layout -> berth -> OCI layout: the OCI manifest keeps its digest.
	must "skopeo copy berth -> oci:" skopeo copy --src-tls-verify=false \
		"docker://$repo:v1" "oci:$run/oci-1:v1"
	must "skopeo copy oci: -> berth" skopeo copy --dest-tls-verify=false \
		"oci:$run/oci-1:v1" "docker://$REG/clients/skopeo/from-oci:v1"
	must "skopeo copy berth -> oci: again" skopeo copy --src-tls-verify=false \
		"docker://$REG/clients/skopeo/from-oci:v1" "oci:$run/oci-2:v1"
	local d1 d2
	d1=$(jq -r '.manifests[0].digest' "$run/oci-1/index.json")
	d2=$(jq -r '.manifests[0].digest' "$run/oci-2/index.json")
	check "the OCI manifest was $d1 before the round trip through berth, $d2 after" [ "$d1" = "$d2" ]
	must "crane digest of the OCI copy" crane digest --insecure "$REG/clients/skopeo/from-oci:v1"
	check "berth serves the OCI copy as $(out), the layout has $d1" [ "$(out)" = "$d1" ]
	ok "skopeo copy oci: -> docker://$REG/clients/skopeo/from-oci:v1 -> oci: keeps digest $d1"

	# skopeo delete resolves the tag and deletes the manifest by digest.
	must "skopeo delete" skopeo delete --tls-verify=false "docker://$repo:v1"
	must_fail "skopeo inspect after delete" "manifest unknown" \
		skopeo inspect --tls-verify=false "docker://$repo@$digest"
	ok "skopeo delete: $repo@$digest is gone"
}

# --- regctl: tags, digests, manifests, real tag deletion -------------------

test_regctl() {
	local repo=$REG/clients/regctl/hello d1 d2
	must "regctl image copy v1" regctl image copy "$REG/clients/crane/hello:v1" "$repo:v1"
	must "regctl image copy v2" regctl image copy "$REG/clients/multiarch/oci:amd64" "$repo:v2"

	must "regctl tag ls" regctl tag ls "$repo"
	check "regctl tag ls lists $(out | paste -sd' ') instead of v1 v2" [ "$(out | paste -sd' ')" = "v1 v2" ]
	ok "regctl tag ls: v1 v2"

	must "regctl image digest" regctl image digest "$repo:v1"
	d1=$(out)
	must "regctl image digest v2" regctl image digest "$repo:v2"
	d2=$(out)
	must "crane digest" crane digest --insecure "$REG/clients/crane/hello:v1"
	check "regctl image digest says $d1, the source is $(out)" [ "$d1" = "$(out)" ]
	ok "regctl image digest: $d1"

	must "regctl manifest get" regctl manifest get --format raw-body "$repo:v1"
	check "the manifest body regctl got does not hash to $d1" \
		[ "sha256:$(sha256sum <"$run/out" | cut -d' ' -f1)" = "$d1" ]
	ok "regctl manifest get: body hashes to $d1"

	# regctl first tries DELETE /v2/<name>/manifests/<tag> (202 = done) and
	# only else overwrites the tag with a dummy manifest that it deletes.
	# (Its trace log has a line per request: req-method, req-url, resp-status.)
	must "regctl tag delete" regctl tag delete "$repo:v1"
	check "regctl tag delete did not get 202 for DELETE /v2/clients/regctl/hello/manifests/v1" \
		grep -q "req-method=DELETE req-url=http://$REG/v2/clients/regctl/hello/manifests/v1 .*resp-status=\"202 " "$run/err"
	check "regctl tag delete fell back to pushing a dummy manifest to the tag" \
		lacks "req-method=PUT " "$run/err"
	must "regctl tag ls after tag delete" regctl tag ls "$repo"
	check "regctl tag ls lists $(out | paste -sd' ') after deleting v1" [ "$(out)" = v2 ]
	must_fail "regctl manifest head of the deleted tag" "not found" regctl manifest head "$repo:v1"
	must "regctl manifest get by digest after tag delete" regctl manifest get --format raw-body "$repo@$d1"
	must "regctl manifest head v2 after tag delete" regctl manifest head "$repo:v2"
	check "v2 moved to $(out) after deleting v1" [ "$(out)" = "$d2" ]
	ok "regctl tag delete: v1 untagged (DELETE .../manifests/v1 -> 202), $repo@$d1 still pullable, v2 intact"

	# A blob in 1 MiB chunks: regctl sends a PATCH with Content-Range for
	# each chunk when a blob is larger than --blob-max (a separate config, so
	# the other steps keep monolithic uploads).
	local blob=$run/blob.bin digest
	head -c $((3 * 1024 * 1024 + 4321)) /dev/urandom >"$blob"
	digest=sha256:$(sha256sum <"$blob" | cut -d' ' -f1)
	local chunked=$run/regctl-chunked.json
	REGCTL_CONFIG=$chunked must "regctl registry set --blob-max" \
		regctl registry set --tls disabled --blob-max 1024 --blob-chunk 1048576 "$REG"
	REGCTL_CONFIG=$chunked must "regctl blob put (chunked)" regctl blob put --digest "$digest" "$repo" <"$blob"
	check "regctl blob put printed $(out), not $digest" [ "$(out)" = "$digest" ]
	check "regctl did not upload in 4 PATCHes answered 202: $(grep -c 'req-method=PATCH .*resp-status="202 ' "$run/err")" \
		[ "$(grep -c 'req-method=PATCH .*resp-status="202 ' "$run/err")" = 4 ]
	must "regctl blob get" regctl blob get "$repo" "$digest"
	check "the blob regctl got back differs from the one it put" cmp -s "$run/out" "$blob"
	ok "regctl blob put in 4 chunks + blob get: $digest comes back byte for byte"
}

# --- oras: artifacts and referrers -------------------------------------------

test_oras() {
	local repo=$REG/clients/oras/artifact subject=$REG/clients/oras/app:v1 artifact sbom
	# oras names each layer after its file (the title annotation): push from
	# the file's own directory.
	mkdir -p "$run/oras-push" "$run/oras-pull" "$run/oras-sbom"
	echo "release notes, pushed by oras" >"$run/oras-push/notes.txt"
	cp "$FIXTURES/sbom.spdx.json" "$run/oras-push/"

	must "oras push" in_dir "$run/oras-push" oras push --plain-http --format json \
		--artifact-type application/vnd.example.notes "$repo:v1" notes.txt:text/plain
	artifact=$(jq -r .digest "$run/out")
	must "crane manifest of the artifact" crane manifest --insecure "$repo:v1"
	check "the artifact manifest has artifactType $(jq -r .artifactType "$run/out")" \
		[ "$(jq -r .artifactType "$run/out")" = application/vnd.example.notes ]
	must "oras pull" oras pull --plain-http -o "$run/oras-pull" "$repo:v1"
	check "the file oras pulled differs from the pushed one" cmp -s "$run/oras-pull/notes.txt" "$run/oras-push/notes.txt"
	ok "oras push + pull: $repo:v1 ($artifact), artifactType application/vnd.example.notes"

	# attach pushes a manifest whose subject is the image. oras finds out by
	# itself whether the registry has the referrers API (the OCI-Subject
	# header in the answer to the PUT, 200 from GET /v2/<name>/referrers/);
	# if not, it keeps an index of referrers under the tag sha256-<digest>,
	# so there must be no such tag afterwards.
	must "crane copy of the subject image" crane copy --insecure "$REG/clients/crane/hello:v1" "$subject"
	must "oras attach" in_dir "$run/oras-push" oras attach --plain-http --format json \
		--artifact-type application/vnd.example.sbom "$subject" sbom.spdx.json:application/spdx+json
	sbom=$(jq -r .digest "$run/out")
	ok "oras attach: $sbom to $subject"

	must "oras discover" oras discover --plain-http --format json "$subject"
	check "oras discover does not list the attached SBOM $sbom" \
		[ "$(jq -r --arg d "$sbom" '.manifests[] | select(.digest == $d) | .artifactType' "$run/out")" = application/vnd.example.sbom ]
	must "oras discover --artifact-type" oras discover --plain-http --format json \
		--artifact-type application/vnd.example.other "$subject"
	check "oras discover --artifact-type application/vnd.example.other lists $(jq -c '[.manifests[].digest]' "$run/out")" \
		[ "$(jq '.manifests | length' "$run/out")" = 0 ]
	must "crane ls of the subject's repository" crane ls --insecure "${subject%:*}"
	check "a referrers tag was made: $(out | paste -sd' ')" [ "$(out)" = v1 ]
	ok "oras discover: lists the SBOM through the referrers API, --artifact-type filters it out"

	must "oras pull of the SBOM" oras pull --plain-http -o "$run/oras-sbom" "${subject%:*}@$sbom"
	check "the SBOM oras pulled differs from the attached one" \
		cmp -s "$run/oras-sbom/sbom.spdx.json" "$FIXTURES/sbom.spdx.json"
	ok "oras pull: the SBOM comes back byte for byte"
}

# --- regctl artifacts: referrers made and listed by regctl -------------------

test_regctl_artifact() {
	local subject=$REG/clients/regctl/hello:v2 sig
	echo "a signature, pushed by regctl" >"$run/signature.txt"
	must "regctl artifact put" regctl artifact put --subject "$subject" \
		--artifact-type application/vnd.example.signature \
		--file-media-type text/plain --file "$run/signature.txt" \
		--format '{{ .Manifest.GetDescriptor.Digest }}'
	sig=$(out)
	check "regctl artifact put printed no digest ($sig)" [ "${sig#sha256:}" != "$sig" ]
	ok "regctl artifact put: $sig with subject $subject"

	must "regctl artifact list" regctl artifact list --format '{{ jsonPretty . }}' "$subject"
	check "regctl artifact list does not show $sig" \
		[ "$(jq -r --arg d "$sig" '.descriptors[] | select(.digest == $d) | .artifactType' "$run/out")" = application/vnd.example.signature ]
	must "regctl artifact list --filter-artifact-type" regctl artifact list --format '{{ jsonPretty . }}' \
		--filter-artifact-type application/vnd.example.sbom "$subject"
	check "regctl artifact list --filter-artifact-type application/vnd.example.sbom shows $(jq -c '[.descriptors[].digest]' "$run/out")" \
		[ "$(jq '.descriptors | length' "$run/out")" = 0 ]
	must "crane ls of the subject's repository" crane ls --insecure "${subject%:*}"
	check "a referrers tag was made: $(out | paste -sd' ')" [ "$(out)" = v2 ]
	ok "regctl artifact list: shows $sig (referrers API), the filter hides it"

	must "regctl artifact get" regctl artifact get "${subject%:*}@$sig"
	check "regctl artifact get returned other bytes" cmp -s "$run/out" "$run/signature.txt"
	ok "regctl artifact get: the signature comes back byte for byte"
}

main() {
	install_clients
	run=$(mktemp -d /tmp/berth-clients.XXXXXX)
	trap cleanup EXIT
	trap 'exit 130' INT TERM
	# Client configuration stays in the run's directory.
	export DOCKER_CONFIG=$run/docker-config REGCTL_CONFIG=$run/regctl.json
	mkdir -p "$DOCKER_CONFIG"
	echo '{"default": [{"type": "insecureAcceptAnything"}]}' >"$run/policy.json"

	start_berth
	test_crane
	test_multiarch
	if [ "$SKIP_DOCKER" = 1 ]; then
		echo "skip: docker (SKIP_DOCKER=1)"
	else
		start_dockerd
		test_docker
	fi
	test_skopeo
	test_regctl
	test_oras
	test_regctl_artifact
	test_proxy
}

# scripts/auth-clients.sh sources this file for its helpers: run the steps
# only when executed.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
	main "$@"
fi
