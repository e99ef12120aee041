"""Status rules and presets (`client.upstream.Upstream`, `StatusReader`): every preset against
its own example bodies and the simulator's independent rendering of the provider, the rule
language's semantics, validation, hostile rules and bodies, and headers that never leave the
status URL's origin."""

from __future__ import annotations

import json
import time
import tracemalloc
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from client.presets import PRESETS
from client.simulator import SHAPES, error_message, result_url
from client.upstream import (
    MAX_ERROR_CHARS,
    MAX_HEADERS,
    MAX_HEADERS_BYTES,
    MAX_RESULT_BYTES,
    MAX_RULE_BYTES,
    MAX_RULES,
    Observation,
    Status,
    StatusReader,
    Upstream,
    UpstreamSpecError,
    capped_result,
    check_headers,
    classify_response,
    fetch_status,
)

JOB = "job-7"
FRACTIONS = (0.0, 0.1, 0.25, 0.5, 0.75, 0.99, 1.0)
SECRET = "s3cret-Value-42"

# Not a performance target (bench/ holds those): what the unbudgeted code took was minutes, or
# forever; a loaded CI machine must not fail a test that ran in milliseconds.
HANG_GUARD = 10.0


def body(obj: object) -> bytes:
    return json.dumps(obj).encode()


def reader(**spec: Any) -> StatusReader:
    found = Upstream(**spec).reader()
    assert found is not None
    return found


def rules(*given: dict[str, Any], **hints: Any) -> StatusReader:
    return reader(rules=list(given), **hints)


def classify(upstream: Upstream, http_status: int, payload: bytes) -> Observation:
    found = upstream.reader()
    if found is None:
        return classify_response(http_status, payload)
    return found.classify(http_status, payload)


# -- presets against their own examples and the simulator ----------------------------------


def test_every_preset_has_a_shape_and_the_other_way_round() -> None:
    assert set(PRESETS) == set(SHAPES)
    assert len(PRESETS) == 7


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("state", ["pending", "completed", "error"])
def test_each_preset_reads_its_own_examples(name: str, state: str) -> None:
    example = PRESETS[name]["assumes"][state]
    seen = classify(Upstream(preset=name), 200, body(example))
    assert seen.status == state, seen
    if state == "error" and name != "vtwatch":  # the original protocol carries no message
        assert seen.error
    if state != "completed":
        assert seen.result is None


# The parts of each shape's result that the simulator renders with `result_url`.
RESULT_OF_SHAPE: dict[str, Any] = {
    "heygen": result_url(JOB),
    "synthesia": result_url(JOB),
    "google-lro": {"uri": result_url(JOB)},
    "azure-lro": {"url": result_url(JOB)},
    "elevenlabs-dubbing": {"dubbing_id": JOB, "target_languages": ["es"]},
    "assemblyai": {"id": JOB, "text": f"simulated transcript of job {JOB}"},
}
# The shapes whose error body carries the simulator's `error_message`.
MESSAGE_IN_SHAPE = {"heygen", "elevenlabs-dubbing", "assemblyai", "google-lro", "azure-lro"}


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("state", ["pending", "completed", "error"])
def test_each_preset_reads_the_simulators_rendering_of_its_provider(name: str, state: str) -> None:
    """Two independent readings of each provider's documentation agree, at every stage."""
    upstream = Upstream(preset=name)
    for fraction in FRACTIONS:
        rendered = SHAPES[name].status(JOB, state, fraction)
        seen = classify(upstream, 200, body(rendered))
        assert seen.status == state, (fraction, rendered, seen)
        if state == "error" and name in MESSAGE_IN_SHAPE:
            assert seen.error is not None and error_message(JOB) in seen.error
        elif state == "error" and name != "vtwatch":
            assert seen.error
        if state == "completed" and name in RESULT_OF_SHAPE:
            assert seen.result == RESULT_OF_SHAPE[name] and not seen.result_truncated
        elif state != "completed":
            assert seen.result is None


def test_progress_presets_read_the_simulators_progress() -> None:
    for name in ("google-lro", "azure-lro"):
        seen = classify(Upstream(preset=name), 200, body(SHAPES[name].status(JOB, "pending", 0.5)))
        assert seen.progress == 50.0, name


# -- the vtwatch preset is the original protocol ---------------------------------------------


ORIGINAL_BODIES = [
    {"result": "pending", "progress": 40, "eta_seconds": 12},
    {"result": "pending", "progress": 140, "eta_seconds": -3},
    {"result": "pending", "progress": "x"},
    {"result": "completed"},
    {"result": "error"},
    {"result": "done"},
    {"result": 1},
    {"nothing": True},
    [1, 2],
    "pending",
]


def test_the_default_preset_is_exactly_classify_response() -> None:
    assert Upstream().reader() is None
    assert Upstream(preset="vtwatch").reader() is None
    assert Upstream(headers={"X-Api-Key": SECRET}).reader() is None


@pytest.mark.parametrize("document", ORIGINAL_BODIES, ids=range(len(ORIGINAL_BODIES)))
def test_the_vtwatch_preset_with_an_override_reads_the_original_bodies_the_same(
    document: Any,
) -> None:
    overridden = reader(preset="vtwatch", eta="eta_seconds")
    original = classify_response(200, body(document))
    seen = overridden.classify(200, body(document))
    assert seen.status == original.status
    assert seen.transient == original.transient
    if original.status is not None:
        assert seen.progress == original.progress
        if original.eta_seconds is not None and original.eta_seconds > 0:
            assert seen.eta_seconds == original.eta_seconds


@pytest.mark.parametrize("code", [404, 410, 401, 429, 500, 503])
def test_the_vtwatch_preset_with_an_override_reads_http_failures_the_same(code: int) -> None:
    overridden = reader(preset="vtwatch", progress="progress")
    original = classify_response(code, b"", "4")
    seen = overridden.classify(code, b"", "4")
    assert (seen.status, seen.error, seen.retry_after) == (
        original.status,
        original.error,
        original.retry_after,
    )


# -- rule semantics --------------------------------------------------------------------------


def test_the_first_matching_rule_wins() -> None:
    read = rules(
        {"path": "a", "equals": 1, "then": "error"},
        {"path": "a", "exists": True, "then": "completed"},
        {"path": "b", "exists": True, "then": "pending"},
    )
    assert read.classify(200, body({"a": 1, "b": 1})).status is Status.ERROR
    assert read.classify(200, body({"a": 2, "b": 1})).status is Status.COMPLETED
    assert read.classify(200, body({"b": 1})).status is Status.PENDING


def test_equals_in_and_exists() -> None:
    read = rules(
        {"path": "s", "equals": "done", "then": "completed"},
        {"path": "s", "in": ["failed", "rejected"], "then": "error"},
        {"path": "gone", "exists": False, "then": "pending"},
    )
    assert read.classify(200, body({"s": "done", "gone": 1})).status is Status.COMPLETED
    assert read.classify(200, body({"s": "rejected", "gone": 1})).status is Status.ERROR
    assert read.classify(200, body({"s": "running"})).status is Status.PENDING
    assert read.classify(200, body({"s": "running", "gone": 1})).transient
    # exists false: null is "no value", so a null field counts as absent
    assert read.classify(200, body({"s": "x", "gone": None})).status is Status.PENDING


def test_exists_true_takes_any_value_even_false_and_empty() -> None:
    read = rules({"path": "x", "exists": True, "then": "completed"})
    values: list[Any] = [False, 0, "", [], {}]
    for value in values:
        assert read.classify(200, body({"x": value})).status is Status.COMPLETED, value
    assert read.classify(200, body({"x": None})).transient


def test_true_is_not_1_and_1_is_1_point_0() -> None:
    one = rules({"path": "x", "equals": 1, "then": "completed"})
    assert one.classify(200, body({"x": True})).transient
    assert one.classify(200, body({"x": 1.0})).status is Status.COMPLETED
    assert one.classify(200, body({"x": "1"})).transient
    true = rules({"path": "x", "equals": True, "then": "completed"})
    assert true.classify(200, body({"x": 1})).transient
    assert true.classify(200, body({"x": True})).status is Status.COMPLETED
    zero = rules({"path": "x", "in": [0, "a"], "then": "completed"})
    assert zero.classify(200, body({"x": False})).transient
    assert zero.classify(200, body({"x": 0.0})).status is Status.COMPLETED
    obj = rules({"path": "x", "equals": {"a": [1]}, "then": "completed"})
    assert obj.classify(200, body({"x": {"a": [1]}})).status is Status.COMPLETED


def test_a_named_status_code_is_decided_by_its_rule_and_only_that_one() -> None:
    read = rules(
        {"http_status": 503, "then": "error"},
        {"http_status": [202, 409], "then": "pending"},
        {"path": "s", "equals": "ok", "then": "completed"},
    )
    named = read.classify(503, b"maintenance")
    assert named.status is Status.ERROR and named.error == "HTTP 503"
    assert read.classify(409, b"").status is Status.PENDING
    assert read.classify(202, body({"s": "ok"})).status is Status.PENDING  # rule order
    unnamed = read.classify(502, b"", "7")
    assert unnamed.transient and unnamed.error == "HTTP 502" and unnamed.retry_after == 7.0
    assert read.classify(429, b"").transient
    not_found = read.classify(404, b"")
    assert not_found.status is Status.ERROR
    assert not_found.error is not None and not_found.error.startswith("HTTP 404")
    assert read.classify(200, body({"s": "ok"})).status is Status.COMPLETED


def test_a_status_code_with_a_path_needs_both() -> None:
    read = rules(
        {"http_status": 404, "path": "code", "equals": "gone", "then": "completed"},
        {"path": "s", "exists": True, "then": "pending"},
    )
    assert read.classify(404, body({"code": "gone"})).status is Status.COMPLETED
    # 404 named, but its rule does not match: the original protocol's reading
    fallback = read.classify(404, body({"code": "other"}))
    assert fallback.status is Status.ERROR and fallback.error == "HTTP 404: job not found"
    assert read.classify(200, body({"code": "gone"})).transient  # the rule wants a 404
    # a rule that names no status code reads the body of a named one too
    assert read.classify(404, body({"code": "other", "s": 1})).status is Status.PENDING


def test_a_body_no_rule_matches_is_transient_with_an_excerpt() -> None:
    read = rules({"path": "state", "equals": "done", "then": "completed"})
    seen = read.classify(200, body({"state": "thinking" * 50}))
    assert seen.transient
    assert seen.error is not None and seen.error.startswith("no rule matched: state gave ")
    assert "thinking" in seen.error and len(seen.error) < 200
    missing = read.classify(200, body({}))
    assert missing.transient and "null or missing" in (missing.error or "")


@pytest.mark.parametrize(
    "payload", [b"", b"<html>busy</html>", b'{"state": "do', b"\xff\xfe", b"NaN-ish"]
)
def test_a_body_that_is_not_json_is_transient(payload: bytes) -> None:
    seen = rules({"path": "state", "equals": "done", "then": "completed"}).classify(200, payload)
    assert seen.transient and seen.error == "response body is not JSON"


def test_a_body_over_64_kib_is_transient_and_a_megabyte_never_raises() -> None:
    read = rules({"path": "state", "equals": "done", "then": "completed"})
    big = body({"state": "done", "pad": "x" * 70_000})
    seen = read.classify(200, big)
    assert seen.transient and seen.error == "response body over 64 KiB"
    megabyte = b'{"state": "done", "pad": [' + b"1," * 500_000 + b"1]}"
    assert len(megabyte) > 1_000_000
    started = time.perf_counter()
    seen = read.classify(200, megabyte)
    assert seen.transient and seen.error == "response body over 64 KiB"
    assert time.perf_counter() - started < HANG_GUARD


PROGRESS = [
    (40, "percent", 40.0),
    (40.5, "percent", 40.5),
    (140, "percent", 100.0),
    (-3, "percent", 0.0),
    (0.25, "fraction", 25.0),
    (1.5, "fraction", 100.0),
    ("42%", "percent", 42.0),
    (" 7.5 % ", "percent", 7.5),
    ("42%", "fraction", 42.0),  # a percentage is one, whatever the scale
    ("42", "percent", None),
    ("lots", "percent", None),
    (True, "percent", None),
    (None, "percent", None),
    ([40], "percent", None),
    ({"p": 1}, "percent", None),
    (1e400, "percent", None),  # json.loads makes it inf
]


@pytest.mark.parametrize(("value", "scale", "expected"), PROGRESS)
def test_progress_reads_numbers_fractions_and_percent_strings(
    value: Any, scale: str, expected: float | None
) -> None:
    read = rules({"path": "s", "equals": "run", "then": "pending"}, progress="p")
    if scale == "fraction":
        read = reader(
            rules=[{"path": "s", "equals": "run", "then": "pending"}],
            progress="p",
            progress_scale="fraction",
        )
    payload = body({"s": "run", "p": value}) if value != 1e400 else b'{"s": "run", "p": 1e400}'
    seen = read.classify(200, payload)
    assert seen.status is Status.PENDING and seen.progress == expected


@pytest.mark.parametrize(
    ("value", "expected"), [(12, 12.0), (0.5, 0.5), (-1, None), ("12", None), (False, None)]
)
def test_eta(value: Any, expected: float | None) -> None:
    read = rules({"path": "s", "equals": "run", "then": "pending"}, eta="left.seconds")
    seen = read.classify(200, body({"s": "run", "left": {"seconds": value}}))
    assert seen.eta_seconds == expected


def test_an_error_message_is_read_and_cut_at_500_characters() -> None:
    read = rules({"path": "s", "equals": "failed", "then": "error"}, error="why")
    seen = read.classify(200, body({"s": "failed", "why": "y" * 2000}))
    assert seen.status is Status.ERROR and seen.error == "y" * MAX_ERROR_CHARS
    structured = read.classify(200, body({"s": "failed", "why": {"code": 7}}))
    assert structured.error == '{"code":7}'
    missing = read.classify(200, body({"s": "failed"}))
    assert missing.error == "the upstream reported an error (HTTP 200)"
    blank = read.classify(200, body({"s": "failed", "why": "   "}))
    assert blank.error == "the upstream reported an error (HTTP 200)"


def test_a_result_over_16_kib_is_cut_and_flagged() -> None:
    read = rules({"path": "s", "equals": "ok", "then": "completed"}, result="out")
    small = read.classify(200, body({"s": "ok", "out": {"url": "https://x/y"}}))
    assert small.result == {"url": "https://x/y"} and not small.result_truncated
    payload = json.dumps({"s": "ok", "out": {"text": "é" * 10_000}}, ensure_ascii=False)
    large = read.classify(200, payload.encode())
    assert large.result_truncated and isinstance(large.result, str)
    assert len(large.result.encode()) <= MAX_RESULT_BYTES
    assert large.result.startswith('{"text":"éé')
    # only a completed job keeps a result
    assert (
        rules({"path": "s", "equals": "ok", "then": "pending"}, result="out")
        .classify(200, body({"s": "ok", "out": 1}))
        .result
        is None
    )


def test_a_result_the_store_cannot_encode_is_kept_as_text() -> None:
    """A lone surrogate (the standard library parses it, orjson does not write it) or nesting
    past orjson's 254 levels: as found, the watch document holding it would not save."""
    read = rules({"path": "s", "equals": "ok", "then": "completed"}, result="out")
    surrogate = read.classify(200, b'{"s": "ok", "out": "\\ud800"}')
    assert surrogate.status is Status.COMPLETED
    assert surrogate.result == '"\\ud800"' and surrogate.result_truncated
    deep = read.classify(200, b'{"s": "ok", "out": ' + b"[" * 1000 + b"]" * 1000 + b"}")
    assert deep.status is Status.COMPLETED and deep.result_truncated
    middling = read.classify(200, b'{"s": "ok", "out": ' + b"[" * 300 + b"]" * 300 + b"}")
    assert middling.result_truncated and middling.result == "[" * 300 + "]" * 300
    assert capped_result([1, "a"]) == ([1, "a"], False)


def test_an_error_message_deeper_than_the_interpreter_never_raises() -> None:
    read = rules({"path": "s", "equals": "no", "then": "error"}, error="why")
    seen = read.classify(200, b'{"s": "no", "why": ' + b"[" * 1000 + b"]" * 1000 + b"}")
    assert seen.status is Status.ERROR and seen.error


def test_retry_after_is_kept_on_every_reading() -> None:
    read = rules({"path": "s", "equals": "run", "then": "pending"})
    assert read.classify(200, body({"s": "run"}), "5").retry_after == 5.0
    assert read.classify(200, body({"s": "?"}), "5").retry_after == 5.0


# -- validation ------------------------------------------------------------------------------


def spec_error(**spec: Any) -> UpstreamSpecError:
    with pytest.raises(UpstreamSpecError) as caught:
        Upstream.from_json(spec)
    return caught.value


RULE = {"path": "s", "equals": "ok", "then": "completed"}
INVALID: list[tuple[dict[str, Any], str]] = [
    ({"rules": [RULE, {"path": "s[", "equals": 1, "then": "pending"}]}, "upstream.rules[1].path"),
    ({"rules": [{"path": "", "equals": 1, "then": "pending"}]}, "upstream.rules[0].path"),
    ({"rules": [{"path": 7, "equals": 1, "then": "pending"}]}, "upstream.rules[0].path"),
    ({"preset": "nope"}, "upstream.preset"),
    ({"preset": "HeyGen"}, "upstream.preset"),
    ({"rules": [{"path": "s", "equals": 1, "then": "done"}]}, "upstream.rules[0].then"),
    ({"rules": [{"path": "s", "equals": 1}]}, "upstream.rules[0].then"),
    ({"rules": [{"path": "s", "equals": 1, "then": "timeout"}]}, "upstream.rules[0].then"),
    ({"rules": [RULE] * (MAX_RULES + 1)}, "upstream.rules"),
    ({"rules": []}, "upstream.rules"),
    ({"rules": "status == 1"}, "upstream.rules"),
    ({"rules": {"path": "s", "equals": 1, "then": "pending"}}, "upstream.rules"),
    ({"rules": [RULE, None]}, "upstream.rules[1]"),
    ({"rules": [RULE, RULE, {**RULE, "in": ["x" * 1100]}]}, "upstream.rules[2]"),
    ({"rules": [{**RULE, "equals": "x" * MAX_RULE_BYTES}]}, "upstream.rules[0]"),
    ({"rules": [{**RULE, "when": 1}]}, "upstream.rules[0].when"),
    ({"rules": [{"path": "s", "then": "pending"}]}, "upstream.rules[0]"),
    ({"rules": [{**RULE, "exists": True}]}, "upstream.rules[0]"),
    ({"rules": [{"then": "pending"}]}, "upstream.rules[0]"),
    ({"rules": [{"equals": 1, "http_status": 200, "then": "pending"}]}, "upstream.rules[0].equals"),
    ({"rules": [{"path": "s", "in": "ab", "then": "pending"}]}, "upstream.rules[0].in"),
    ({"rules": [{"path": "s", "exists": 1, "then": "pending"}]}, "upstream.rules[0].exists"),
    ({"rules": [{"http_status": 99, "then": "error"}]}, "upstream.rules[0].http_status"),
    ({"rules": [{"http_status": 600, "then": "error"}]}, "upstream.rules[0].http_status"),
    ({"rules": [{"http_status": "503", "then": "error"}]}, "upstream.rules[0].http_status"),
    ({"rules": [{"http_status": True, "then": "error"}]}, "upstream.rules[0].http_status"),
    ({"rules": [{"http_status": [], "then": "error"}]}, "upstream.rules[0].http_status"),
    ({"rules": [{"http_status": [503, 5.0], "then": "error"}]}, "upstream.rules[0].http_status"),
    ({"rules": ["s == 1"]}, "upstream.rules[0]"),
    ({"progress": "a["}, "upstream.progress"),
    ({"eta": "to_string(@)"}, "upstream.eta"),
    ({"error": ""}, "upstream.error"),
    ({"result": "a.b.c.("}, "upstream.result"),
    ({"progress_scale": "permille"}, "upstream.progress_scale"),
    ({"rules": [RULE], "bogus": 1}, "upstream.bogus"),
]


@pytest.mark.parametrize(("spec", "field"), INVALID, ids=[field for _, field in INVALID])
def test_an_unusable_upstream_names_its_field(spec: dict[str, Any], field: str) -> None:
    assert spec_error(**spec).field == field


@pytest.mark.parametrize(
    "path",
    [
        "to_string(@)",
        'to_string(status) == `"x"`',
        "a == b",
        "status == status",
        "length(a) > length(b)",
        "[?a == b]",
        "contains(tags, name)",
    ],
)
def test_to_string_and_computed_comparisons_are_refused(path: str) -> None:
    error = spec_error(rules=[{"path": path, "exists": True, "then": "completed"}])
    assert error.field == "upstream.rules[0].path"


@pytest.mark.parametrize(
    "path", ['status == `"done"`', '[?state == `"x"`] | length(@)', 'contains(tags, `"a"`)']
)
def test_comparisons_with_a_literal_are_allowed(path: str) -> None:
    assert reader(rules=[{"path": path, "exists": True, "then": "completed"}])


BAD_HEADERS: list[tuple[dict[str, Any], str]] = [
    ({"Host": SECRET}, "upstream.headers.Host"),
    ({"content-length": SECRET}, "upstream.headers.content-length"),
    ({"Connection": SECRET}, "upstream.headers.Connection"),
    ({"Transfer-Encoding": SECRET}, "upstream.headers.Transfer-Encoding"),
    ({"X-Api-Key": SECRET + "\r\nX-Evil: 1"}, "upstream.headers.X-Api-Key"),
    ({"X-Api-Key": SECRET + "\n"}, "upstream.headers.X-Api-Key"),
    ({"X-Api-Key": SECRET + "\0"}, "upstream.headers.X-Api-Key"),
    ({"X-Api-Key": SECRET + "\x01"}, "upstream.headers.X-Api-Key"),
    ({"X-Api-Key": "\x7f" + SECRET}, "upstream.headers.X-Api-Key"),
    ({"X-Api-Key": SECRET + "\x1b[0m"}, "upstream.headers.X-Api-Key"),
    ({"X-Api-Key": SECRET + "\ud800"}, "upstream.headers.X-Api-Key"),
    ({"X-Api-Key\n": SECRET}, "upstream.headers.X-Api-Key\n"),
    ({"X Api Key": SECRET}, "upstream.headers.X Api Key"),
    ({"": SECRET}, "upstream.headers."),
    ({"X-Api-Key": 42}, "upstream.headers.X-Api-Key"),
    ({f"X-H{i}": SECRET for i in range(MAX_HEADERS + 1)}, "upstream.headers"),
    ({"X-Api-Key": SECRET + "k" * MAX_HEADERS_BYTES}, "upstream.headers"),
]


@pytest.mark.parametrize(("headers", "field"), BAD_HEADERS, ids=[f for _, f in BAD_HEADERS])
def test_refused_headers_name_the_header_never_its_value(
    headers: dict[str, Any], field: str
) -> None:
    error = spec_error(headers=headers)
    assert error.field == field
    assert SECRET not in str(error) and SECRET not in error.reason and SECRET not in repr(error)


def test_headers_must_be_an_object() -> None:
    assert spec_error(headers=[["X-Api-Key", SECRET]]).field == "upstream.headers"
    with pytest.raises(UpstreamSpecError):
        check_headers("X-Api-Key: " + SECRET)


def test_header_values_may_hold_tabs_spaces_and_any_unicode() -> None:
    Upstream(headers={"X-Api-Key": "a\tb c é \u2028 ключ", "X-Empty": ""})


def test_sixteen_headers_and_8_kib_are_fine() -> None:
    Upstream(headers={f"X-H{i}": "v" for i in range(MAX_HEADERS)})
    Upstream(headers={"X-Api-Key": "k" * (MAX_HEADERS_BYTES - len("X-Api-Key"))})


def test_the_repr_never_shows_a_header_value() -> None:
    upstream = Upstream(headers={"X-Api-Key": "s3cret"}, preset="heygen")
    assert "s3cret" not in repr(upstream) and "s3cret" not in str(upstream)
    assert "X-Api-Key" in repr(upstream) and "heygen" in repr(upstream)


def test_from_json_ignores_nulls_and_fills_the_preset() -> None:
    upstream = Upstream.from_json({"preset": "heygen", "rules": None, "result": None})
    assert upstream.reading() == {"preset": "heygen"}
    assert upstream.reader() is not None
    assert Upstream.from_json({"preset": None}).reader() is None  # null: the default


# -- hostile rules and bodies ----------------------------------------------------------------

ROWS = [{"id": i, "name": f"row-{i:05d}", "tags": ["a", "b"]} for i in range(1150)]
WIDE = {"rows": ROWS}
DEEP_PATH = ".".join(["a"] * 200)
HOSTILE = [
    "[@,@][]" + " | [@,@][]" * 30,
    "rows" + " | [@,@][]" * 30,
    "[" * 60 + "@" + "]" * 60,
    DEEP_PATH,
    "rows[*].[id, name, tags, [id, name, tags, [id, name, tags]]][][]",
    "sort_by(rows, &name)[*].name",
    "reverse(sort_by(rows, &id))[*].tags[]",
    "max_by(rows, &id).name",
    "rows[?id > `5`].tags[] | length(@)",
    "rows[*].tags[] | [@, @][] | [@, @][] | [@, @][] | [@, @][] | [@, @][] | [@, @][]",
    'join(`","`, rows[*].name)',
    "keys(rows[0])",
    "rows[*].{a: id, b: {c: name, d: tags}}",
]


@pytest.mark.parametrize("path", HOSTILE, ids=range(len(HOSTILE)))
def test_an_expensive_rule_is_bounded_and_transient(path: str) -> None:
    payload = body(WIDE)
    assert 50_000 < len(payload) <= 64 * 1024
    read = rules({"path": path, "equals": "never", "then": "completed"})
    started = time.perf_counter()
    seen = read.classify(200, payload)
    assert time.perf_counter() - started < HANG_GUARD
    assert seen.transient and (seen.error or "").startswith("no rule matched")


@pytest.mark.parametrize("path", HOSTILE[:2], ids=range(2))
def test_a_doubling_path_runs_out_of_budget_instead_of_memory(path: str) -> None:
    read = rules({"path": path, "exists": True, "then": "completed"})
    started = time.perf_counter()
    seen = read.classify(200, body(WIDE))
    assert time.perf_counter() - started < HANG_GUARD
    assert seen.transient and seen.error == f"no rule matched: {path} could not be evaluated"


def test_expensive_hints_never_raise_or_hang() -> None:
    doubling = "[@,@][]" + " | [@,@][]" * 30
    read = reader(
        rules=[{"path": "rows[0].id", "equals": 0, "then": "completed"}],
        progress=doubling,
        eta=doubling,
        result=doubling,
    )
    started = time.perf_counter()
    seen = read.classify(200, body(WIDE))
    assert time.perf_counter() - started < HANG_GUARD
    assert seen.status is Status.COMPLETED and seen.result is None and seen.progress is None
    failing = reader(
        rules=[{"path": "rows[0].id", "equals": 0, "then": "error"}], error=doubling
    ).classify(200, body(WIDE))
    assert failing.status is Status.ERROR and failing.error


def test_a_function_that_refuses_its_argument_matches_no_rule() -> None:
    read = rules(
        {"path": "length(n)", "equals": 3, "then": "completed"},
        {"path": "s", "equals": "run", "then": "pending"},
    )
    assert read.classify(200, body({"n": 5, "s": "run"})).status is Status.PENDING
    only = rules({"path": "abs(s)", "equals": 1, "then": "completed"})
    seen = only.classify(200, body({"s": "x"}))
    assert seen.transient and "could not be evaluated" in (seen.error or "")


@pytest.mark.parametrize("opening", [b"[", b'{"a":'])
def test_a_body_nested_10000_deep_never_raises(opening: bytes) -> None:
    closing = b"]" if opening == b"[" else b"}"
    payload = opening * 10_000 + b"1" + closing * 10_000
    read = rules({"path": "a.a.a", "exists": True, "then": "completed"}, result="@", error="@")
    seen = read.classify(200, payload)
    assert seen.transient


def test_a_body_nested_as_deep_as_parsers_allow_never_raises() -> None:
    payload = b'{"s": "ok", "x": ' + b"[" * 1000 + b"]" * 1000 + b"}"
    for then in ("completed", "error", "pending"):
        read = rules(
            {"path": "x" + "[0]" * 100, "equals": "never", "then": "pending"},
            {"path": "s", "equals": "ok", "then": then},
            result="x",
            error="x",
            progress="x",
        )
        assert read.classify(200, payload).status == then


# -- headers stay with the status URL's origin -----------------------------------------------


class Recorder:
    """A local server recording the X-Api-Key each request brought."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None]] = []
        self.app = web.Application()
        self.app.router.add_get("/{name}", self.handle)
        self.redirect_to: dict[str, str] = {}

    async def handle(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.seen.append((name, request.headers.get("X-Api-Key")))
        if name in self.redirect_to:
            raise web.HTTPFound(self.redirect_to[name])
        return web.json_response({"result": "completed"})


async def test_headers_are_not_sent_to_another_origin_after_a_redirect() -> None:
    first, second = Recorder(), Recorder()
    async with (
        TestServer(first.app, host="127.0.0.1") as one,
        TestServer(second.app, host="127.0.0.1") as two,
        aiohttp.ClientSession() as session,
    ):
        # the same server under another name is another origin, and so is another port
        first.redirect_to["start"] = f"http://localhost:{one.port}/renamed"
        first.redirect_to["hop"] = f"http://127.0.0.1:{two.port}/other-port"
        first.redirect_to["same"] = "/landing"
        headers = {"X-Api-Key": SECRET}

        seen = await fetch_status(session, one.make_url("/start"), 5, headers)
        assert seen.status is Status.COMPLETED
        assert first.seen == [("start", SECRET), ("renamed", None)]

        first.seen.clear()
        seen = await fetch_status(session, one.make_url("/hop"), 5, headers)
        assert seen.status is Status.COMPLETED
        assert first.seen == [("hop", SECRET)] and second.seen == [("other-port", None)]

        first.seen.clear()
        seen = await fetch_status(session, one.make_url("/same"), 5, headers)
        assert seen.status is Status.COMPLETED
        assert first.seen == [("same", SECRET), ("landing", SECRET)]


async def test_headers_are_not_sent_again_on_coming_back_to_the_first_origin() -> None:
    first, second = Recorder(), Recorder()
    async with (
        TestServer(first.app, host="127.0.0.1") as one,
        TestServer(second.app, host="127.0.0.1") as two,
        aiohttp.ClientSession() as session,
    ):
        first.redirect_to["start"] = f"http://127.0.0.1:{two.port}/away"
        second.redirect_to["away"] = f"http://127.0.0.1:{one.port}/back"
        seen = await fetch_status(session, one.make_url("/start"), 5, {"X-Api-Key": SECRET})
        assert seen.status is Status.COMPLETED
        assert first.seen == [("start", SECRET), ("back", None)]
        assert second.seen == [("away", None)]


async def test_a_redirect_loop_with_headers_is_a_transient_failure() -> None:
    first = Recorder()
    async with (
        TestServer(first.app, host="127.0.0.1") as one,
        aiohttp.ClientSession() as session,
    ):
        first.redirect_to["loop"] = "/loop"
        seen = await fetch_status(session, one.make_url("/loop"), 5, {"X-Api-Key": SECRET})
        assert seen.transient and "redirects" in (seen.error or "")


async def test_fetch_status_reads_through_the_reader_and_sends_headers_unfollowed() -> None:
    first = Recorder()
    async with (
        TestServer(first.app, host="127.0.0.1") as one,
        aiohttp.ClientSession() as session,
    ):
        first.redirect_to["moved"] = "/elsewhere"
        read = rules({"path": "result", "equals": "completed", "then": "error"}, error="result")
        seen = await fetch_status(
            session, one.make_url("/x"), 5, {"X-Api-Key": SECRET}, reader=read
        )
        assert seen.status is Status.ERROR and seen.error == "completed"
        refused = await fetch_status(
            session, one.make_url("/moved"), 5, {"X-Api-Key": SECRET}, follow_redirects=False
        )
        assert refused.status is Status.ERROR and "not followed" in (refused.error or "")
        assert first.seen == [("x", SECRET), ("moved", SECRET)]


SHARED = "@" + " | {a: @, b: @}" * 24  # 2^24 paths to the body, through 24 shared objects


@pytest.mark.parametrize("then", ["completed", "error"])
def test_a_hint_with_shared_branches_is_cut_not_written_out(then: str) -> None:
    """A result or error path that doubles the value at each stage, by sharing: writing it
    out whole would take 2^24 copies of the body (minutes, gigabytes)."""
    read = rules({"path": "s", "equals": "x", "then": then}, result=SHARED, error=SHARED)
    started = time.perf_counter()
    seen = read.classify(200, body({"s": "x", "pad": "y" * 1000}))
    assert time.perf_counter() - started < HANG_GUARD
    assert seen.status == then
    if then == "completed":
        assert seen.result_truncated and isinstance(seen.result, str)
        assert len(seen.result.encode()) == MAX_RESULT_BYTES
        assert seen.result.startswith('{"a":{"a":')
    else:
        assert seen.error is not None and len(seen.error) == MAX_ERROR_CHARS
        assert seen.error.startswith('{"a":{"a":')


def test_a_result_is_written_as_orjson_writes_it() -> None:
    value: dict[str, Any] = {"a": [1, 2.5, None, True, "é", {"b": []}], "c": {}}
    read = rules({"path": "s", "equals": "x", "then": "completed"}, result="@.v")
    padded = {"s": "x", "v": {**value, "pad": "z" * MAX_RESULT_BYTES}}
    seen = read.classify(200, json.dumps(padded, ensure_ascii=False).encode())
    assert seen.result_truncated
    assert seen.result.startswith('{"a":[1,2.5,null,true,"é",{"b":[]}],"c":{},"pad":"zzz')
    assert len(seen.result.encode()) <= MAX_RESULT_BYTES


def test_all_the_rules_and_hints_of_an_answer_share_one_work_budget() -> None:
    """32 rules and 4 hints, each just within what one expression may do: together they may
    do no more than one (each on its own budget, a poll took about two seconds of CPU, the
    worker's event loop stalled for every tenant)."""
    heavy = "rows[*].tags[]" + " | [@, @][]" * 4  # 36,800 elements: within one budget
    many = [
        {"path": f"{heavy} | [{i}]", "equals": "never", "then": "pending"}
        for i in range(MAX_RULES - 1)
    ]
    payload = body(WIDE)
    for last in (
        {"path": f"{heavy} | [0]", "equals": "never", "then": "pending"},
        {"path": "rows[0].id", "equals": 0, "then": "completed"},  # never reached
    ):
        read = reader(rules=[*many, last], progress=heavy, eta=heavy, error=heavy, result=heavy)
        seen = read.classify(200, payload)
        assert seen.transient  # the one budget ran out before the last rule
    alone = rules({"path": heavy, "exists": True, "then": "completed"})
    assert alone.classify(200, payload).status is Status.COMPLETED  # one fits


async def test_every_header_value_accepted_can_be_sent() -> None:
    first = Recorder()
    values = ["a\tb", " padded ", "é-ключ", "\u2028x", "x" * 4000]
    async with (
        TestServer(first.app, host="127.0.0.1") as one,
        aiohttp.ClientSession() as session,
    ):
        for value in values:
            Upstream(headers={"X-Api-Key": value})
            for follow in (True, False):
                seen = await fetch_status(
                    session, one.make_url("/x"), 5, {"X-Api-Key": value}, follow_redirects=follow
                )
                assert seen.status is Status.COMPLETED, (value, seen)
        assert len(first.seen) == 2 * len(values)


def test_no_rule_matched_names_the_path_that_was_tried() -> None:
    read = rules(
        {"http_status": 202, "path": "queued", "equals": True, "then": "pending"},
        {"path": "state", "equals": "done", "then": "completed"},
        {"http_status": 409, "then": "error"},
    )
    assert read.classify(200, body({"state": "busy"})).error == (
        "no rule matched: state gave 'busy'"
    )
    assert read.classify(202, body({"queued": 1})).error == "no rule matched: queued gave a number"
    only_codes = rules({"http_status": 202, "path": "q", "exists": True, "then": "pending"})
    assert only_codes.classify(200, body({"q": 1})).error == (
        "no rule matched: none is for HTTP 200"
    )


def test_azure_lro_reads_the_lower_case_statuses_some_azure_services_answer() -> None:
    reader = Upstream(preset="azure-lro").reader()
    assert reader is not None
    for body, status in [
        (b'{"status": "succeeded"}', Status.COMPLETED),
        (b'{"status": "failed", "error": {"message": "no"}}', Status.ERROR),
        (b'{"status": "canceled"}', Status.ERROR),
        (b'{"status": "notStarted"}', Status.PENDING),
        (b'{"status": "running"}', Status.PENDING),
    ]:
        assert reader.classify(200, body).status is status, body


def test_a_function_result_is_work_a_join_that_doubles_a_string_stops_at_once() -> None:
    """One tenant's rule must not build 2^46 bytes on a shared worker: `join` doubling a
    string at each stage visits few nodes, so the budget counts what functions return."""
    doubling = '`"xxxxxxxxxxxxxxxx"`' + " | join('', [@, @])" * 42
    read = reader(rules=[{"path": doubling, "exists": True, "then": "completed"}])
    started = time.perf_counter()
    seen = read.classify(200, b'{"a": 1}')
    assert seen.transient and "could not be evaluated" in (seen.error or "")
    assert time.perf_counter() - started < HANG_GUARD


def test_a_flatten_is_charged_before_it_builds_its_list() -> None:
    """`[@, @ x 240][]` over a 64 KiB array of zeros would build 23 million elements before a
    charge after the fact; the size is spent first, so nothing that large is built."""
    payload = json.dumps([0] * 30_000, separators=(",", ":")).encode()
    wide = "[@,@,@][] | [" + ",".join(["@"] * 240) + "][]"
    read = reader(rules=[{"path": wide, "exists": True, "then": "completed"}])
    tracemalloc.start()
    try:
        seen = read.classify(200, payload)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert seen.transient
    assert peak < 20 * 1024 * 1024, peak  # the 23-million-element list is 180 MB
