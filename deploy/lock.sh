#!/usr/bin/env bash
# Regenerate deploy/requirements.lock: the runtime dependencies of pyproject.toml, pinned with
# hashes at the versions installed in .venv (the versions the tests ran against), resolved for
# every Python >= 3.11 with environment markers (uv's universal mode): Debian's 3.11.2 needs
# async-timeout for redis, 3.12 does not. uv lives in a throw-away venv, never the project's.
set -euo pipefail
cd "$(dirname "$0")/.."

tools=${VTW_LOCK_TOOLS:-/tmp/vtw-lock-tools}
[[ -x $tools/bin/uv ]] || {
	python3 -m venv "$tools"
	"$tools/bin/pip" install -q uv==0.13.8
}
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
.venv/bin/pip freeze --exclude-editable >"$constraints"
UV_CUSTOM_COMPILE_COMMAND="deploy/lock.sh" "$tools/bin/uv" pip compile --quiet --universal \
	--python-version 3.11 --generate-hashes --no-strip-markers --constraints "$constraints" \
	--output-file deploy/requirements.lock pyproject.toml
# The constraint file is a temporary path: drop it from the "via" comments.
sed -i -e '/^    #   -c /d' deploy/requirements.lock
