"""deploy/smoke.sh takes its Debian mirror from DEBIAN_MIRROR or this machine's apt sources, and
stops with a clear message when there is none: no mirror host is built in.

Runs the script's `debian_mirror` function alone (the rest of the script needs root and podman)
on fake apt source trees (`APT_SOURCES_ROOT`), under each awk found here (Debian's default is
mawk)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent.parent / "deploy" / "smoke.sh"
AWKS = [name for name in ("gawk", "mawk") if shutil.which(name)] or ["awk"]

ONE = "http://one.example/debian\n"  # the mirror in SOURCES_LIST
TWO = "http://two.example/debian\n"  # the mirror in DEBIAN_SOURCES

SOURCES_LIST = """\
# comments, other suites and deb-src lines are not the Debian archive for bookworm
deb-src http://src.example/debian bookworm main
deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main
deb http://security.example/debian-security bookworm-security main
deb http://contrib-only.example/debian bookworm contrib
deb [ arch=amd64 signed-by=/etc/k.gpg ] http://one.example/debian bookworm main contrib
deb http://later.example/debian bookworm main
"""

DEBIAN_SOURCES = """\
Types: deb
URIs: http://two.example/debian-security
Suites: bookworm-security
Components: main

Types: deb
URIs: http://disabled.example/debian
Suites: bookworm
Components: main
Enabled: no

Types: deb-src deb
# a comment inside a stanza
uris: http://two.example/debian
  http://two-b.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""

NODESOURCE_SOURCES = """\
Types: deb
URIs: https://deb.nodesource.com/node_20.x
Suites: nodistro
Components: main
"""


def debian_mirror_function() -> str:
    match = re.search(r"^debian_mirror\(\) \{.*?^\}$", SCRIPT.read_text(), flags=re.S | re.M)
    assert match is not None, f"{SCRIPT} has no debian_mirror() function"
    return match.group(0)


@pytest.fixture(params=AWKS)
def path(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """PATH with `awk` being the awk under test."""
    awk_dir = tmp_path / "awk-bin"
    awk_dir.mkdir()
    (awk_dir / "awk").symlink_to(shutil.which(request.param) or request.param)
    return f"{awk_dir}{os.pathsep}{os.environ['PATH']}"


def apt_root(tmp_path: Path, files: dict[str, str]) -> Path:
    """A fake root whose etc/apt holds `files` (paths relative to etc/apt)."""
    root = tmp_path / "root"
    (root / "etc" / "apt" / "sources.list.d").mkdir(parents=True)
    for name, text in files.items():
        (root / "etc" / "apt" / name).write_text(text)
    return root


def debian_mirror(root: Path, path: str, **env: str) -> subprocess.CompletedProcess[str]:
    program = f"set -euo pipefail\n{debian_mirror_function()}\ndebian_mirror bookworm\n"
    return subprocess.run(
        ["bash", "-c", program],
        env={"PATH": path, "APT_SOURCES_ROOT": str(root), **env},
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )


def test_one_line_format(tmp_path: Path, path: str) -> None:
    root = apt_root(tmp_path, {"sources.list": SOURCES_LIST})
    result = debian_mirror(root, path)
    assert (result.returncode, result.stdout, result.stderr) == (0, ONE, "")


def test_deb822_format(tmp_path: Path, path: str) -> None:
    root = apt_root(
        tmp_path,
        {
            "sources.list.d/debian.sources": DEBIAN_SOURCES,
            "sources.list.d/nodesource.sources": NODESOURCE_SOURCES,
        },
    )
    result = debian_mirror(root, path)
    assert (result.returncode, result.stdout, result.stderr) == (0, TWO, "")


def test_apt_order_sources_list_then_sources_list_d_by_name(tmp_path: Path, path: str) -> None:
    files = {
        "sources.list.d/a.sources": DEBIAN_SOURCES,
        "sources.list.d/b.list": "deb http://b.example/debian bookworm main\n",
    }
    assert debian_mirror(apt_root(tmp_path, files), path).stdout == TWO
    files["sources.list"] = "deb http://first.example/debian bookworm main\n"
    shutil.rmtree(tmp_path / "root")
    assert debian_mirror(apt_root(tmp_path, files), path).stdout == "http://first.example/debian\n"


def test_debian_mirror_overrides_apt_sources(tmp_path: Path, path: str) -> None:
    root = apt_root(tmp_path, {"sources.list": SOURCES_LIST})
    result = debian_mirror(root, path, DEBIAN_MIRROR="http://override.example/debian")
    assert (result.returncode, result.stdout) == (0, "http://override.example/debian\n")


@pytest.mark.parametrize("files", [{}, {"sources.list.d/nodesource.sources": NODESOURCE_SOURCES}])
def test_no_mirror_fails_and_says_how_to_set_one(
    tmp_path: Path, path: str, files: dict[str, str]
) -> None:
    files = {
        **files,
        "sources.list.d/old.list.disabled": "deb http://disabled.example/debian bookworm main\n",
    }
    root = apt_root(tmp_path, files)
    result = debian_mirror(root, path)
    assert result.returncode != 0
    assert result.stdout == ""  # no mirror made up
    assert "no Debian mirror for 'bookworm main'" in result.stderr
    assert "DEBIAN_MIRROR=" in result.stderr
    assert f"{root}/etc/apt/sources.list" in result.stderr  # where it looked
    if files.get("sources.list.d/nodesource.sources"):
        assert "nodesource.sources" in result.stderr
