#!/usr/bin/env bash
# Debian's chromium, for the dashboard's browser test (tests/e2e/test_dashboard_browser.py,
# driven by the playwright package with executable_path: no browser download). Installed when
# missing, as root with apt-get; elsewhere the test is skipped, and fails under CI=true.
set -euo pipefail
command -v chromium >/dev/null && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
	echo "installing Debian's chromium for the browser test..." >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get install -y -q chromium >/dev/null ||
		{ apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }
else
	echo "chromium is missing and cannot be installed here (needs root and apt-get)" >&2
fi
