#!/usr/bin/env bash
# The registry clients of scripts/clients.sh -- crane, skopeo, oras, regctl
# and docker -- logging in to a Berth with authentication on, once with
# `--auth basic` and once with `--auth token`, each with its own login
# command. For each mode, on a fresh schema:
#
#   - two replicas of `berth serve` on one database and one blob store;
#   - users made with the berth CLI: dev (pull,push,delete on team/**),
#     reader (pull on team/**), and an API token of dev;
#   - each client logs in as dev (a wrong password first, where its login
#     checks it), pushes and pulls; regctl and, against the second replica,
#     crane use dev's API token as the password;
#   - reader may pull, and each client shows the refusal of a push as it
#     prints it: 403 DENIED in basic mode, 401 UNAUTHORIZED (with
#     error="insufficient_scope" in the challenge) in token mode;
#   - anonymous: no pull of team/**; after `berth grant anonymous
#     'public/**' pull`, a pull of public/** without any login;
#   - dev's API token works on the second replica, is revoked with `berth
#     token revoke`, and fails on its very next request there, without any
#     wait (in token mode, a Bearer token issued for it as well);
#   - no password, API token or Bearer token reaches the replicas' logs.
#
# Each step prints "ok: <mode>: <what>"; the first that fails stops the run
# with the client's debug output and the tail of the replicas' logs.
# Everything a client writes -- docker, crane, oras, regctl, skopeo
# configurations and credentials -- stays in the run's temp dir, removed at
# the end.
#
# Environment: as scripts/clients.sh (BERTH_TEST_DATABASE_URL,
# BERTH_CACHE_DIR, SKIP_DOCKER=1 to leave docker out, BERTH_BIN).
set -euo pipefail
cd "$(dirname "$0")/.."

# The helpers (ok, fail, must, must_fail, check, out, the client wrappers
# with their debug logs, install_clients, start_dockerd, stop, layer,
# file_in_layer) and settings of clients.sh, which runs nothing when
# sourced.
# shellcheck source=scripts/clients.sh
source scripts/clients.sh

DEV_PASS='dev passphrase: correct horse battery'
READER_PASS='reader passphrase: staple'
BERTH=
mode=        # basic or token: the mode under test
url=         # the database URL of the mode's schema
REG2=        # host:port of the second replica
DEV_TOKEN=   # dev's API token, and its id
DEV_TOKEN_ID=
BEARER=      # the last Bearer token the script got from the token service
pids=()      # the replicas
schemas=()

auth_cleanup() {
	local status=$?
	set +e
	if [ -n "$dockerd_pid" ]; then
		stop "$dockerd_pid"
		local containerd=$run/docker/exec/containerd/containerd.pid
		[ -s "$containerd" ] && stop "$(cat "$containerd")"
	fi
	local pid
	for pid in "${pids[@]}"; do stop "$pid"; done
	for schema in "${schemas[@]}"; do psql "$DB_URL" -qc "DROP SCHEMA $schema CASCADE"; done
	if [ -n "$run" ]; then
		grep -o " $run/[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null
		rm -rf "$run"
	fi
	[ $status -eq 0 ] && echo "auth clients: all steps passed in ${SECONDS}s"
	return $status
}

# ok for this script: every line names the mode.
mok() { ok "$mode: $*"; }

# berth_cli <args...>: the berth CLI on the mode's database.
berth_cli() { "$BERTH" "$@" --database-url "$url"; }

# by_mode <basic text> <token text>: the text of the mode.
by_mode() { if [ "$mode" = basic ]; then echo "$1"; else echo "$2"; fi; }

# refused <what> <text> <command...>: the command must fail and its error
# message -- the last lines it printed, after its debug log -- must say
# text. Sets said to the line that says it.
refused() {
	local what=$1 text=$2
	shift 2
	last_cmd="$*"
	if "$@" >"$run/out" 2>"$run/err"; then
		fail "$what: the command succeeded, it should have failed"
	fi
	said=$({ tail -n 5 "$run/out"; tail -n 5 "$run/err"; } | grep -F -- "$text" | tail -n 1 | cut -c1-240 || true)
	[ -n "$said" ] || fail "$what: the client's error message does not say $text"
}

# start_replicas: two `berth serve --auth $mode` on a fresh schema, sharing
# the blob store; sets url, REG and REG2.
start_replicas() {
	local schema i log addr
	schema=auth_${mode}_$$_$(date +%s)
	psql "$DB_URL" -v ON_ERROR_STOP=1 -qc "CREATE SCHEMA $schema"
	schemas+=("$schema")
	case "$DB_URL" in *\?*) url="$DB_URL&search_path=$schema" ;; *) url="$DB_URL?search_path=$schema" ;; esac
	mkdir -p "$run/$mode"
	for i in 1 2; do
		# One at a time: the first migrates the schema and makes the
		# token signing key, which the second then loads.
		log=$run/berth-$mode-$i.log
		"$BERTH" serve --listen 127.0.0.1:0 --auth "$mode" --database-url "$url" \
			--data-dir "$run/$mode/data-$i" --storage-dir "$run/$mode/blobs" \
			--log-level debug >"$log" 2>&1 &
		pids+=($!)
		addr=
		for _ in $(seq 300); do
			[ -e "$log" ] && addr=$(sed -n 's/.*msg="berth serving" addr=\([^ ]*\).*/\1/p' "$log")
			[ -n "$addr" ] && break
			kill -0 "${pids[-1]}" 2>/dev/null || fail "berth --auth $mode exited at start"
			sleep 0.1
		done
		[ -n "$addr" ] || fail "berth --auth $mode did not start listening"
		if [ $i = 1 ]; then REG=$addr; else REG2=$addr; fi
	done
	mok "two replicas of berth serve --auth $mode on one database (schema $schema) and one blob store: http://$REG and http://$REG2"
}

stop_replicas() {
	local pid
	for pid in "${pids[@]}"; do stop "$pid" || true; done
	pids=()
	# Keep the logs out of what fail shows for the next mode.
	mv "$run"/berth-"$mode"-*.log "$run/$mode/"
}

setup_users() {
	must "berth user add dev" berth_cli user add dev --password-stdin <<<"$DEV_PASS"
	must "berth user add reader" berth_cli user add reader --password-stdin <<<"$READER_PASS"
	must "berth grant dev" berth_cli grant dev 'team/**' pull,push,delete
	must "berth grant reader" berth_cli grant reader 'team/**' pull
	must "berth token create" berth_cli token create --user dev --description "auth-clients.sh"
	DEV_TOKEN=$(out)
	check "berth token create printed $(out), not an API token alone" \
		grep -Eqx 'berth_[A-Za-z0-9]+_[A-Za-z0-9]+' "$run/out"
	DEV_TOKEN_ID=$(cut -d_ -f2 <<<"$DEV_TOKEN")
	must "berth grant list" berth_cli grant list
	check "berth grant list shows $(out | paste -sd';')" \
		grep -Eq '^dev +team/\*\* +delete,pull,push$' "$run/out"
	mok "berth CLI: users dev (pull,push,delete on team/**) and reader (pull on team/**), dev's API token $DEV_TOKEN_ID"
}

# --- crane: auth login, append, pull; the reader refused -------------------

test_crane_auth() {
	local dev=$run/$mode/crane-dev reader=$run/$mode/crane-reader repo=$REG/team/crane digest
	# crane auth login only writes config.json: it does not ask the
	# registry whether the password holds.
	DOCKER_CONFIG=$dev must "crane auth login (dev)" crane auth login "$REG" -u dev --password-stdin <<<"$DEV_PASS"
	check "crane auth login wrote no credentials for $REG to $dev/config.json" \
		[ "$(jq -r --arg r "$REG" '.auths[$r].auth' "$dev/config.json" | base64 -d)" = "dev:$DEV_PASS" ]
	mkdir -p "$run/$mode/hello"
	cp "$FIXTURES/hello.txt" "$run/$mode/hello/"
	layer "$run/$mode/hello" "$run/$mode/hello.tar"
	DOCKER_CONFIG=$dev must "crane append (dev)" crane append --insecure -f "$run/$mode/hello.tar" -t "$repo:v1"
	DOCKER_CONFIG=$dev must "crane digest (dev)" crane digest --insecure "$repo:v1"
	digest=$(out)
	mok "crane auth login + append as dev: pushed $repo:v1 ($digest)"

	DOCKER_CONFIG=$reader must "crane auth login (reader)" crane auth login "$REG" -u reader --password-stdin <<<"$READER_PASS"
	DOCKER_CONFIG=$reader must "crane pull (reader)" crane pull --insecure "$repo:v1" "$run/$mode/crane-pull.tar"
	mkdir -p "$run/$mode/crane-pull"
	tar -C "$run/$mode/crane-pull" -xf "$run/$mode/crane-pull.tar"
	check "crane pull as reader: hello.txt differs from the pushed one" \
		cmp -s <(file_in_layer "$run/$mode/crane-pull/$(jq -r '.[0].Layers[0]' "$run/$mode/crane-pull/manifest.json")" hello.txt) \
		"$FIXTURES/hello.txt"
	mok "crane pull as reader: the pulled layer holds the pushed file"

	# A new layer, so that the push starts with an upload (POST).
	mkdir -p "$run/$mode/reader-layer"
	echo "pushed by reader, who may not" >"$run/$mode/reader-layer/reader.txt"
	layer "$run/$mode/reader-layer" "$run/$mode/reader.tar"
	DOCKER_CONFIG=$reader refused "crane append as reader" \
		"$(by_mode "DENIED: requested access to the resource is denied" "UNAUTHORIZED: authentication required")" \
		crane append --insecure -f "$run/$mode/reader.tar" -t "$repo:reader"
	local challenge=
	if [ "$mode" = token ]; then
		# crane's debug log shows the challenge: the token lacks push.
		check "the refusal crane got has no insufficient_scope challenge" \
			grep -q 'Www-Authenticate: Bearer .*scope="repository:team/crane:pull,push",error="insufficient_scope"' "$run/err"
		challenge=' (challenge error="insufficient_scope")'
	fi
	mok "crane append as reader refused$challenge: $said"
}

# --- skopeo: --creds, --src-creds, --dest-creds, login --authfile ----------

test_skopeo_auth() {
	local repo=$REG/team/skopeo digest authfile=$run/$mode/skopeo-auth.json
	must "skopeo copy --dest-creds dev" skopeo copy --dest-tls-verify=false --dest-creds "dev:$DEV_PASS" \
		"docker-archive:$run/$mode/crane-pull.tar" "docker://$repo:v1"
	must "skopeo inspect --creds reader" skopeo inspect --tls-verify=false --creds "reader:$READER_PASS" "docker://$repo:v1"
	digest=$(jq -r .Digest "$run/out")
	DOCKER_CONFIG=$run/$mode/crane-dev must "crane digest of the skopeo copy" crane digest --insecure "$repo:v1"
	check "skopeo inspect as reader says $digest, crane as dev $(out)" [ "$(out)" = "$digest" ]
	mok "skopeo copy --dest-creds dev docker-archive: -> $repo:v1, skopeo inspect --creds reader: $digest"

	must "skopeo login --authfile" skopeo login --tls-verify=false --authfile "$authfile" -u dev --password-stdin "$REG" <<<"$DEV_PASS"
	check "skopeo login wrote no credentials for $REG to $authfile" \
		[ "$(jq -r --arg r "$REG" '.auths[$r].auth' "$authfile" | base64 -d)" = "dev:$DEV_PASS" ]
	must "skopeo list-tags --authfile" skopeo list-tags --tls-verify=false --authfile "$authfile" "docker://$repo"
	check "skopeo list-tags lists $(jq -c .Tags "$run/out")" [ "$(jq -c .Tags "$run/out")" = '["v1"]' ]
	mok "skopeo login --authfile + list-tags: [\"v1\"]"

	refused "skopeo copy as reader" \
		"$(by_mode "denied: requested access to the resource is denied" "unauthorized: authentication required")" \
		skopeo copy --src-tls-verify=false --dest-tls-verify=false \
		--src-creds "reader:$READER_PASS" --dest-creds "reader:$READER_PASS" \
		"docker://$repo:v1" "docker://$REG/team/skopeo-reader:v1"
	mok "skopeo copy --dest-creds reader refused: $said"
}

# --- oras: login, push, pull; the reader refused ----------------------------

test_oras_auth() {
	local dev=$run/$mode/oras-dev.json reader=$run/$mode/oras-reader.json repo=$REG/team/oras
	mkdir -p "$run/$mode/oras-push" "$run/$mode/oras-pull"
	echo "release notes, pushed by oras as dev" >"$run/$mode/oras-push/notes.txt"
	must "oras login (dev)" oras login --plain-http --registry-config "$dev" -u dev --password-stdin "$REG" <<<"$DEV_PASS"
	check "oras login did not say Login Succeeded" grep -q "Login Succeeded" "$run/out"
	must "oras push (dev)" in_dir "$run/$mode/oras-push" oras push --plain-http --registry-config "$dev" \
		--format json --artifact-type application/vnd.example.notes "$repo:v1" notes.txt:text/plain
	local artifact
	artifact=$(jq -r .digest "$run/out")
	mok "oras login + push as dev: $repo:v1 ($artifact)"

	must "oras login (reader)" oras login --plain-http --registry-config "$reader" -u reader --password-stdin "$REG" <<<"$READER_PASS"
	must "oras pull (reader)" oras pull --plain-http --registry-config "$reader" -o "$run/$mode/oras-pull" "$repo:v1"
	check "the file oras pulled as reader differs from the pushed one" \
		cmp -s "$run/$mode/oras-pull/notes.txt" "$run/$mode/oras-push/notes.txt"
	mok "oras pull as reader: the file comes back"
	echo "pushed by reader, who may not" >"$run/$mode/oras-push/reader.txt"
	refused "oras push as reader" \
		"$(by_mode "denied: requested access to the resource is denied" "unauthorized: authentication required")" \
		in_dir "$run/$mode/oras-push" oras push --plain-http --registry-config "$reader" "$repo:reader" reader.txt:text/plain
	mok "oras push as reader refused: $said"
}

# --- regctl: registry login with dev's API token; the reader refused -------

test_regctl_auth() {
	local dev=$run/$mode/regctl-dev.json reader=$run/$mode/regctl-reader.json repo=$REG/team/regctl digest
	# Without --skip-check, regctl registry set fails in basic mode: it
	# pings the registry, with no credentials yet.
	REGCTL_CONFIG=$dev must "regctl registry set" regctl registry set --skip-check --tls disabled "$REG"
	REGCTL_CONFIG=$dev must "regctl registry login (dev, API token)" regctl registry login -u dev --pass-stdin "$REG" <<<"$DEV_TOKEN"
	REGCTL_CONFIG=$dev must "regctl image copy (dev)" regctl image copy "$REG/team/crane:v1" "$repo:v1"
	REGCTL_CONFIG=$dev must "regctl image digest (dev)" regctl image digest "$repo:v1"
	digest=$(out)
	REGCTL_CONFIG=$dev must "regctl manifest get (dev)" regctl manifest get --format raw-body "$repo:v1"
	check "the manifest body regctl got does not hash to $digest" \
		[ "sha256:$(sha256sum <"$run/out" | cut -d' ' -f1)" = "$digest" ]
	mok "regctl registry login with dev's API token as the password + image copy: $repo:v1 ($digest)"

	REGCTL_CONFIG=$reader must "regctl registry set (reader)" regctl registry set --skip-check --tls disabled "$REG"
	REGCTL_CONFIG=$reader must "regctl registry login (reader)" regctl registry login -u reader --pass-stdin "$REG" <<<"$READER_PASS"
	REGCTL_CONFIG=$reader must "regctl image digest (reader)" regctl image digest "$repo:v1"
	check "regctl image digest as reader says $(out), not $digest" [ "$(out)" = "$digest" ]
	REGCTL_CONFIG=$reader refused "regctl image copy as reader" \
		"$(by_mode '"code":"DENIED"' "unauthorized")" \
		regctl image copy "$repo:v1" "$REG/team/regctl-reader:v1"
	mok "regctl image copy as reader refused: $said"
}

# --- docker: login, push, pull; the reader refused --------------------------

test_docker_auth() {
	local dev=$run/$mode/docker-dev reader=$run/$mode/docker-reader repo=$REG/team/docker id pushed
	DOCKER_CONFIG=$dev must "docker login (dev)" docker login -u dev --password-stdin "$REG" <<<"$DEV_PASS"
	check "docker login did not say Login Succeeded" grep -q "Login Succeeded" "$run/out"
	if [ "$mode" = token ]; then
		# docker logs in with offline_token=true: it keeps a refresh token
		# (an API token of dev) instead of the password.
		check "docker login kept no refresh token (identitytoken) for $REG" \
			jq -e --arg r "$REG" '.auths[$r].identitytoken | startswith("berth_")' "$dev/config.json" >/dev/null
		must "berth token list --user dev" berth_cli token list --user dev
		check "berth token list does not show docker's refresh token" \
			grep -q "refresh token of an offline login by docker" "$run/out"
		mok "docker login as dev: a refresh token in config.json, listed by berth token list"
	else
		mok "docker login as dev"
	fi

	must "docker build" env DOCKER_BUILDKIT=0 docker build -t "$repo:v1" "$FIXTURES"
	must "docker inspect" docker image inspect -f '{{.Id}}' "$repo:v1"
	id=$(out)
	DOCKER_CONFIG=$dev must "docker push (dev)" docker push "$repo:v1"
	pushed=$(sed -n 's/^v1: digest: \(sha256:[0-9a-f]*\) size: .*/\1/p' "$run/out")
	check "docker push did not print the pushed digest" [ -n "$pushed" ]
	must "docker rmi" docker rmi "$repo:v1"
	DOCKER_CONFIG=$dev must "docker pull (dev)" docker pull "$repo:v1"
	must "docker inspect of the pulled image" docker image inspect -f '{{.Id}}' "$repo:v1"
	check "docker pulled image $(out), pushed $id" [ "$(out)" = "$id" ]
	mok "docker push + rmi + pull as dev: $repo:v1 ($pushed), same image id"
	# docker asks for pull on the source as well, and mounts the layer.
	must "docker tag" docker tag "$repo:v1" "$REG/team/docker-mounted:v1"
	DOCKER_CONFIG=$dev must "docker push to a second repository (dev)" docker push "$REG/team/docker-mounted:v1"
	check "docker push did not mount the layer from team/docker" grep -q "Mounted from team/docker" "$run/out"
	mok "docker push $REG/team/docker-mounted:v1 as dev: layer mounted from team/docker"

	DOCKER_CONFIG=$reader must "docker login (reader)" docker login -u reader --password-stdin "$REG" <<<"$READER_PASS"
	must "docker rmi" docker rmi "$repo:v1"
	DOCKER_CONFIG=$reader must "docker pull (reader)" docker pull "$repo:v1"
	must "docker tag" docker tag "$repo:v1" "$REG/team/docker-reader:v1"
	# dockerd says "denied" for the 401 of token mode as for the 403 of
	# basic mode.
	DOCKER_CONFIG=$reader refused "docker push as reader" "denied: requested access to the resource is denied" \
		docker push "$REG/team/docker-reader:v1"
	mok "docker pull as reader; docker push as reader refused: $said"
}

# --- anonymous: refused on team/**, allowed to pull public/** once granted --

test_anonymous() {
	local nobody=$run/$mode/anonymous public=$REG/public/app
	mkdir -p "$nobody"
	DOCKER_CONFIG=$nobody refused "crane digest without login" "UNAUTHORIZED: authentication required" \
		crane digest --insecure "$REG/team/crane:v1"
	mok "crane pull without login refused: $said"
	refused "skopeo inspect without login" "unauthorized" \
		skopeo inspect --tls-verify=false --no-creds "docker://$REG/team/crane:v1"
	mok "skopeo inspect --no-creds refused: $said"
	if [ "$SKIP_DOCKER" != 1 ]; then
		# dockerd does not even ask a registry that challenges with Basic
		# when it has no credentials for it.
		DOCKER_CONFIG=$nobody refused "docker pull without login" \
			"$(by_mode "no basic auth credentials" "may require 'docker login'")" \
			docker pull "$REG/team/docker:v1"
		mok "docker pull without login refused: $said"
	fi

	must "berth grant anonymous" berth_cli grant anonymous 'public/**' pull
	must "berth grant dev public" berth_cli grant dev 'public/**' pull,push
	# Within the registry, crane mounts the blobs from team/crane: dev
	# needs pull there and push here, and gets both.
	DOCKER_CONFIG=$run/$mode/crane-dev must "crane copy (dev) to public/**" \
		crane copy --insecure "$REG/team/crane:v1" "$public:v1"
	check "crane copy did not mount the blobs from team/crane (no 'mounted blob' in its log)" \
		grep -q "mounted blob" "$run/err"
	mok "crane copy as dev to $public:v1: blobs mounted from team/crane"
	DOCKER_CONFIG=$nobody must "crane pull without login" crane pull --insecure "$public:v1" "$run/$mode/anonymous.tar"
	mkdir -p "$run/$mode/anonymous-pull"
	tar -C "$run/$mode/anonymous-pull" -xf "$run/$mode/anonymous.tar"
	check "hello.txt pulled without login differs from the pushed one" \
		cmp -s <(file_in_layer "$run/$mode/anonymous-pull/$(jq -r '.[0].Layers[0]' "$run/$mode/anonymous-pull/manifest.json")" hello.txt) \
		"$FIXTURES/hello.txt"
	must "skopeo inspect without login" skopeo inspect --tls-verify=false --no-creds "docker://$public:v1"
	mok "berth grant anonymous 'public/**' pull: crane pull and skopeo inspect of $public:v1 without login"
	if [ "$SKIP_DOCKER" = 1 ]; then
		:
	elif [ "$mode" = basic ]; then
		# Hence no anonymous docker pull in basic mode: that takes token
		# mode, where dockerd asks the token service for an anonymous
		# token.
		DOCKER_CONFIG=$nobody refused "docker pull of public/** without login" "no basic auth credentials" \
			docker pull "$public:v1"
		mok "docker pull of $public:v1 without login: not in basic mode, dockerd sends no request without credentials: $said"
	else
		DOCKER_CONFIG=$nobody must "docker pull without login" docker pull "$public:v1"
		mok "docker pull of $public:v1 without login"
	fi
	DOCKER_CONFIG=$nobody refused "crane append without login to public/**" "UNAUTHORIZED: authentication required" \
		crane append --insecure -f "$run/$mode/reader.tar" -t "$public:anonymous"
	DOCKER_CONFIG=$nobody refused "crane digest without login, after the public grant" "UNAUTHORIZED: authentication required" \
		crane digest --insecure "$REG/team/crane:v1"
	mok "without login, still no push to public/** and no pull of team/**: $said"
}

# --- a revoked API token fails at once on the other replica ----------------

test_revocation() {
	local config=$run/$mode/crane-token repo=team/crane jwt status t0 ms
	DOCKER_CONFIG=$config must "crane auth login to the second replica (dev's API token)" \
		crane auth login "$REG2" -u dev --password-stdin <<<"$DEV_TOKEN"
	DOCKER_CONFIG=$config must "crane digest on the second replica with the API token" crane digest --insecure "$REG2/$repo:v1"
	# curl, as a client that keeps what it was given: in token mode a
	# Bearer token from the first replica's token service, issued for the
	# API token; in basic mode the API token itself.
	local curl_auth
	if [ "$mode" = token ]; then
		must "a Bearer token from the first replica for dev's API token" \
			curl -sSf -u "dev:$DEV_TOKEN" "http://$REG/auth/token?service=berth&scope=repository:$repo:pull"
		jwt=$(jq -r .token "$run/out")
		BEARER=$jwt
		curl_auth=(-H "Authorization: Bearer $jwt")
	else
		curl_auth=(-u "dev:$DEV_TOKEN")
	fi
	must "curl of the manifest on the second replica" curl -sS -o /dev/null -w '%{http_code}' "${curl_auth[@]}" \
		-H 'Accept: application/vnd.docker.distribution.manifest.v2+json' "http://$REG2/v2/$repo/manifests/v1"
	check "the second replica answered $(out) to the API token before its revocation" [ "$(out)" = 200 ]
	mok "dev's API token works on the second replica: crane digest, and curl with $(by_mode "it as the Basic password" "a Bearer token issued for it by the first replica")"

	must "berth token revoke" berth_cli token revoke "$DEV_TOKEN_ID"
	t0=$(date +%s%N)
	# No wait: the very next request must fail.
	DOCKER_CONFIG=$config refused "crane digest on the second replica with the revoked API token" \
		"UNAUTHORIZED" crane digest --insecure "$REG2/$repo:v1"
	ms=$((($(date +%s%N) - t0) / 1000000))
	mok "berth token revoke $DEV_TOKEN_ID; the very next request with it, crane's to the second replica, refused (crane done ${ms}ms after the revoke returned): $said"
	must "curl of the manifest on the second replica after the revocation" curl -sS -D "$run/headers" -o /dev/null \
		-w '%{http_code}' "${curl_auth[@]}" "http://$REG2/v2/$repo/manifests/v1"
	check "the second replica answered $(out) to the revoked API token" [ "$(out)" = 401 ]
	if [ "$mode" = token ]; then
		check "the refusal of the Bearer token says $(grep -i '^www-authenticate' "$run/headers"), not invalid_token" \
			grep -qi '^www-authenticate: Bearer .*error="invalid_token"' "$run/headers"
		mok "the Bearer token issued for the revoked API token: 401 invalid_token on the second replica"
	else
		mok "curl with the revoked API token as the password: 401 on the second replica"
	fi
	# regctl logged in to the first replica with the same API token.
	REGCTL_CONFIG=$run/$mode/regctl-dev.json refused "regctl with the revoked API token" unauthorized \
		regctl image digest "$REG/team/regctl:v1"
	DOCKER_CONFIG=$run/$mode/crane-dev must "crane auth login to the second replica (dev's password)" \
		crane auth login "$REG2" -u dev --password-stdin <<<"$DEV_PASS"
	DOCKER_CONFIG=$run/$mode/crane-dev must "crane digest with dev's password after the revocation" \
		crane digest --insecure "$REG2/$repo:v1"
	mok "regctl with the revoked token refused on the first replica too ($said); dev's password still works"
}

# --- wrong passwords, refused by each client's login that checks them -----
#
# Last: Berth slows every login from an address with recent failures,
# by 100ms after the first failure, doubling with each (auth.Throttle), and
# in basic mode every request is a login; after these steps every request
# of this mode would be slow.

test_wrong_passwords() {
	local dir=$run/$mode/wrong
	mkdir -p "$dir"
	refused "skopeo login with a wrong password" \
		"$(by_mode "invalid username/password" "invalid username/password")" \
		skopeo login --tls-verify=false --authfile "$dir/skopeo-auth.json" -u dev --password-stdin "$REG" <<<"wrong password"
	mok "skopeo login with a wrong password refused: $said"
	refused "oras login with a wrong password" "unauthorized" \
		oras login --plain-http --registry-config "$dir/oras.json" -u dev --password-stdin "$REG" <<<"wrong password"
	mok "oras login with a wrong password refused: $said"
	# regctl keeps the credentials even when its check of them fails.
	REGCTL_CONFIG=$dir/regctl.json must "regctl registry set" regctl registry set --skip-check --tls disabled "$REG"
	REGCTL_CONFIG=$dir/regctl.json refused "regctl registry login with a wrong password" "unauthorized" \
		regctl registry login -u dev --pass-stdin "$REG" <<<"wrong password"
	mok "regctl registry login with a wrong password refused: $said"
	if [ "$SKIP_DOCKER" != 1 ]; then
		DOCKER_CONFIG=$dir/docker refused "docker login with a wrong password" \
			"$(by_mode "401 Unauthorized" "unauthorized: invalid username or password")" \
			docker login -u dev --password-stdin "$REG" <<<"wrong password"
		mok "docker login with a wrong password refused: $said"
	fi
}

# --- no secret in the logs -------------------------------------------------
#
# The replicas log at debug level, so every line they can write is there:
# none may hold a password (right or wrong), dev's API token or its secret
# part, docker's refresh token or a Bearer token the mode handed out.

test_no_secrets_in_logs() {
	local names=("dev's password" "reader's password" "the wrong password" "dev's API token" "its secret part")
	local secrets=("$DEV_PASS" "$READER_PASS" "wrong password" "$DEV_TOKEN" "$(cut -d_ -f3 <<<"$DEV_TOKEN")")
	local refresh i
	if [ -n "$BEARER" ]; then
		names+=("a Bearer token")
		secrets+=("$BEARER")
	fi
	refresh=$(jq -r '.auths[]?.identitytoken // empty' "$run/$mode/docker-dev/config.json" 2>/dev/null || true)
	if [ -n "$refresh" ]; then
		names+=("docker's refresh token")
		secrets+=("$refresh")
	fi
	for i in "${!secrets[@]}"; do
		[ -n "${secrets[$i]}" ] || fail "test_no_secrets_in_logs: ${names[$i]} is empty"
		if grep -qF -- "${secrets[$i]}" "$run"/berth-"$mode"-*.log; then
			last_cmd=
			fail "${names[$i]} is in a replica's log: $(grep -lF -- "${secrets[$i]}" "$run"/berth-"$mode"-*.log | paste -sd' ')"
		fi
	done
	mok "no secret in the replicas' logs ($(printf '%s, ' "${names[@]}" | sed 's/, $//'))"
}

test_mode() {
	mode=$1
	BEARER=
	start_replicas
	setup_users
	test_crane_auth
	test_skopeo_auth
	test_oras_auth
	test_regctl_auth
	if [ "$SKIP_DOCKER" = 1 ]; then
		echo "skip: $mode: docker (SKIP_DOCKER=1)"
	else
		test_docker_auth
	fi
	test_anonymous
	test_revocation
	test_wrong_passwords
	test_no_secrets_in_logs
	stop_replicas
}

auth_main() {
	install_clients
	type -P curl >/dev/null || fail "curl is needed"
	run=$(mktemp -d /tmp/berth-auth-clients.XXXXXX)
	trap auth_cleanup EXIT
	trap 'exit 130' INT TERM
	# Whatever a client reads or writes by default stays in the run's
	# directory too; every step names its own configuration besides.
	export DOCKER_CONFIG=$run/docker-config REGCTL_CONFIG=$run/regctl.json \
		REGISTRY_AUTH_FILE=$run/containers-auth.json
	mkdir -p "$DOCKER_CONFIG"
	echo '{"default": [{"type": "insecureAcceptAnything"}]}' >"$run/policy.json"
	export PGOPTIONS="-c client_min_messages=warning"
	BERTH=${BERTH_BIN:-$CACHE/berth}
	if [ -z "${BERTH_BIN:-}" ]; then
		go build -o "$BERTH" ./cmd/berth || fail "go build ./cmd/berth failed"
	fi
	[ "$SKIP_DOCKER" = 1 ] || start_dockerd
	test_mode basic
	test_mode token
}

auth_main "$@"
