"""pyproject.toml as packaging tools read it today: no deprecated forms that make pip warn."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

PYPROJECT = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())


def test_the_license_is_an_spdx_expression_and_the_backend_reads_it() -> None:
    project = PYPROJECT["project"]
    assert isinstance(project["license"], str)  # a table is deprecated (PEP 639)
    assert not any(c.startswith("License ::") for c in project.get("classifiers", []))
    (setuptools,) = [r for r in PYPROJECT["build-system"]["requires"] if "setuptools" in r]
    minimum = re.fullmatch(r"setuptools>=(\d+).*", setuptools)
    assert minimum is not None and int(minimum[1]) >= 77  # the first to read the string form
