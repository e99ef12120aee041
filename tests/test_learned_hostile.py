"""Learned durations that are garbage (a corrupted Redis hash, a tampered history file) are a
`ConfigurationError`, whatever the garbage: the caller then falls back to the plain backoff.
Numbers Python cannot convert (an int of thousands of digits, one too big for a float) used to
escape as `ValueError` or `OverflowError`, which nobody caught."""

from __future__ import annotations

import json
from typing import Any

import pytest

from client.errors import ConfigurationError
from client.learned import BIN_COUNT, DurationHistogram, ScheduleHistory
from service.store.durations import durations_of

DIGITS = "1" * 5_000  # past Python's 4,300-digit limit of int <-> str conversion
BIG_INT = 10**400  # converts to str, not to float
HUGE_INT = 10**5_000  # converts to neither


@pytest.mark.parametrize(
    "weights",
    [
        {DIGITS: 1},
        {"0" * 5_000 + "4": 1},
        {"4": BIG_INT},
        {"4": -BIG_INT},
        {"4": HUGE_INT},
        {"4": float("nan")},
        {"4": float("inf")},
        {"4": -1.0},
        {"4": "1"},
        {"4": None},
        {"4": [1]},
        {"4": {"1": 1}},
        {4: 1},
        {None: 1},
        {str(BIN_COUNT): 1},
        {"4.0": 1},
        {" 4": 1},
        {"٤": 1},  # an Arabic-Indic digit four
    ],
)
def test_hostile_weights_are_a_configuration_error(weights: dict[Any, Any]) -> None:
    with pytest.raises(ConfigurationError):
        DurationHistogram.from_dict({"v": 1, "w": weights})


@pytest.mark.parametrize(
    "data",
    [
        {"v": HUGE_INT, "w": {}},
        {"v": BIG_INT, "w": {}},
        {"v": float("nan"), "w": {}},
        {"v": 1, "w": None},
        {"v": 1, "w": [["4", 1]]},
        {"v": 1},
        [1, {}],
        None,
        DIGITS,
    ],
    ids=lambda data: type(data).__name__,
)
def test_hostile_histograms_are_a_configuration_error(data: object) -> None:
    with pytest.raises(ConfigurationError):
        DurationHistogram.from_dict(data)


def history(weights: str, version: str = "1", histogram: str | None = None) -> str:
    """A persisted history holding one upstream, as JSON text (numbers written as given)."""
    if histogram is None:
        histogram = '{"v": 1, "w": ' + weights + "}"
    return '{"v": ' + version + ', "upstreams": {"h.example/jobs/{id}/status": ' + histogram + "}}"


def weight(text: str) -> str:
    return history('{"4": ' + text + "}")


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(history('{"' + DIGITS + '": 1}'), id="bin-of-5000-digits"),
        pytest.param(weight(str(BIG_INT)), id="weight-too-big-for-a-float"),
        pytest.param(weight(str(-BIG_INT)), id="negative-weight-too-big"),
        pytest.param(weight(DIGITS), id="weight-of-5000-digits"),
        pytest.param(weight("1e99999"), id="huge-exponent"),
        pytest.param(weight("-1e99999"), id="negative-huge-exponent"),
        pytest.param(weight("NaN"), id="nan"),
        pytest.param(weight("-1"), id="negative"),
        pytest.param(weight('"1"'), id="string-weight"),
        pytest.param(weight("null"), id="null-weight"),
        pytest.param(weight("[1]"), id="list-weight"),
        pytest.param(history("[]"), id="list-of-weights"),
        pytest.param(history("{}", version=DIGITS), id="version-of-5000-digits"),
        pytest.param(history("{}", version=str(BIG_INT)), id="version-too-big"),
        pytest.param(history("{}", version="1e99999"), id="version-huge-exponent"),
        pytest.param(history("", histogram=str(BIG_INT)), id="histogram-a-number"),
        pytest.param(b'{"v": 1, "upstreams": {"\xff": {}}}', id="not-utf-8"),
    ],
)
def test_a_hostile_history_is_a_configuration_error(text: str | bytes) -> None:
    with pytest.raises(ConfigurationError):
        ScheduleHistory.from_json(text)


def test_a_sound_history_still_loads() -> None:
    """The checks refuse garbage only: the last bin and nearly the most weight allowed load."""
    weights = {str(BIN_COUNT - 1): 1e9 - 3, "0": 0, "4": 2.5}
    loaded = ScheduleHistory.from_json(history(json.dumps(weights)))
    durations = loaded.durations("http://h.example/jobs/j1/status")
    assert durations is not None and durations.samples == 1e9 - 0.5


@pytest.mark.parametrize(
    "fields",
    [
        {"scale": "1", DIGITS: "1"},
        {"scale": "1", "0" * 5_000: "1"},
        {"scale": "1", "4": DIGITS},
        {"scale": "1", "4": "1e99999"},
        {"scale": "1", "4": "nan"},
        {"scale": "1", "4": "-1"},
        {"scale": DIGITS, "4": "1"},
        {"scale": "1e-320", "4": "1e300"},  # the weight divided by the scale: infinite
        {"scale": "nan", "4": "1"},
    ],
    ids=lambda fields: ",".join(f"{k[:8]}={v[:8]}" for k, v in fields.items()),
)
def test_a_hostile_stored_hash_is_a_configuration_error(fields: dict[str, str]) -> None:
    with pytest.raises(ConfigurationError):
        durations_of({**fields, "upstream": "h.example/jobs/{id}/status"})
