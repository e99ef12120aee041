"""The HTTP API against hostile callers (issue 8, items 9, 10 and 13), in process.

Values JSON cannot carry are refused with 422 before anything is stored; bodies are capped at
64 KiB (413) and a request without a key is refused (401) before its body is read; no error
echoes more than a short excerpt of its input; API keys are checked at start; the OpenAPI
document declares the bearer scheme and the error answers.
"""

from __future__ import annotations

import json
import math
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from service.api.schemas import WatchCreate
from service.settings import Settings
from tests.service_fixtures import ApiFactory
from worker.cli import describe_invalid, main

STATUS_URL = "http://translate-1:5000/status"
JSON = {"Content-Type": "application/json"}
KEY_A = "key-a-0123456789abcdef"
KEYS = {KEY_A: "a", "key-b-0123456789abcdef": "b"}
SMALL_ERROR = 2000  # bytes: an error body never grows with the input
# The contract (DESIGN.md, "HTTP API (v1)"), written out so that a change to it shows here.
MAX_BODY_BYTES = 64 * 1024
EXCERPT_CHARS = 100
MAX_METADATA_DEPTH = 32


class Upload:
    """`total` bytes of body in `chunk`-sized pieces, pulled only when the server reads;
    `pulled` counts what was read."""

    def __init__(self, total: int, chunk: int = 64 * 1024) -> None:
        self.total, self.chunk, self.pulled = total, chunk, 0

    def __aiter__(self) -> Upload:
        return self

    async def __anext__(self) -> bytes:
        if self.pulled >= self.total:
            raise StopAsyncIteration
        size = min(self.chunk, self.total - self.pulled)
        self.pulled += size
        return b" " * size


def body_with(fragment: str) -> bytes:
    """A request body: the status URL, then `fragment` (raw JSON text, escapes kept as sent)."""
    return f'{{"status_url": "{STATUS_URL}", {fragment}}}'.encode()


def nested_list(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


async def assert_nothing_stored(api: httpx.AsyncClient, **kwargs: Any) -> None:
    listed = await api.get("/v1/watches", **kwargs)
    assert listed.status_code == 200, listed.text
    assert listed.json()["items"] == []
    assert (await api.get("/v1/status", **kwargs)).json()["total"] == 0


def assert_small_422(response: httpx.Response) -> list[dict[str, Any]]:
    """FastAPI's 422 shape, JSON all through, small whatever the input."""
    assert response.status_code == 422, response.text
    assert len(response.content) < SMALL_ERROR, len(response.content)
    detail: list[dict[str, Any]] = json.loads(response.content)["detail"]
    assert detail
    for error in detail:
        assert {"type", "loc", "msg", "input"} <= set(error)
        assert error["loc"][0] == "body"
    return detail


@pytest.fixture
async def keyed(make_api: ApiFactory) -> httpx.AsyncClient:
    return await make_api(Settings(api_keys=KEYS))


# -- item 9: values JSON cannot carry --------------------------------------------------------

NON_FINITE = ["NaN", "Infinity", "-Infinity", "1e309", "-1e309"]
POLICY_FIELDS = ["initial_wait_time", "jitter", "max_wait_time", "max_attempts"]


@pytest.mark.parametrize("field", POLICY_FIELDS)
@pytest.mark.parametrize("value", NON_FINITE)
async def test_non_finite_numbers_in_a_policy_are_422_and_nothing_is_stored(
    api: httpx.AsyncClient, field: str, value: str
) -> None:
    response = await api.post(
        "/v1/watches", content=body_with(f'"policy": {{"{field}": {value}}}'), headers=JSON
    )

    assert_small_422(response)
    await assert_nothing_stored(api)


@pytest.mark.parametrize("value", NON_FINITE)
async def test_non_finite_numbers_in_metadata_are_422_not_stored_as_null(
    api: httpx.AsyncClient, value: str
) -> None:
    response = await api.post(
        "/v1/watches", content=body_with(f'"metadata": {{"x": [1, {value}]}}'), headers=JSON
    )

    assert_small_422(response)
    await assert_nothing_stored(api)


LONE_SURROGATES = [
    ("metadata-value", r'"metadata": {"video": "\ud800"}'),
    ("metadata-key", r'"metadata": {"\udfff": 1}'),
    ("metadata-nested", r'"metadata": {"a": [{"b": ["x\ud83dy"]}]}'),
    ("metadata-nested-key", r'"metadata": {"a": {"\udc00\ud800": true}}'),
    ("unknown-field", r'"\ud800": 1'),
    ("webhook-url", r'"webhook_url": "https://caller.example/h\ud800"'),
]


@pytest.mark.parametrize(
    "fragment", [case[1] for case in LONE_SURROGATES], ids=[case[0] for case in LONE_SURROGATES]
)
async def test_lone_surrogates_are_422_and_nothing_is_stored(
    api: httpx.AsyncClient, fragment: str
) -> None:
    response = await api.post("/v1/watches", content=body_with(fragment), headers=JSON)

    assert_small_422(response)
    await assert_nothing_stored(api)


async def test_a_surrogate_pair_is_a_character_and_is_kept(api: httpx.AsyncClient) -> None:
    response = await api.post(
        "/v1/watches", content=body_with(r'"metadata": {"e": "\ud83d\ude00"}'), headers=JSON
    )

    assert response.status_code == 201, response.text
    watch_id = response.json()["id"]
    assert (await api.get(f"/v1/watches/{watch_id}")).json()["metadata"] == {"e": "😀"}


@pytest.mark.parametrize("depth", [MAX_METADATA_DEPTH + 1, 500, 990, 2000])
async def test_deeply_nested_json_is_422_not_a_500(api: httpx.AsyncClient, depth: int) -> None:
    nested = '{"a": ' * (depth - 1) + "1" + "}" * (depth - 1)

    response = await api.post(
        "/v1/watches", content=body_with(f'"metadata": {nested}'), headers=JSON
    )

    assert_small_422(response)
    await assert_nothing_stored(api)


async def test_metadata_nested_to_its_limit_is_accepted(api: httpx.AsyncClient) -> None:
    metadata: Any = 1
    for _ in range(MAX_METADATA_DEPTH - 1):
        metadata = {"a": metadata}

    response = await api.post("/v1/watches", json={"status_url": STATUS_URL, "metadata": metadata})

    assert response.status_code == 201, response.text
    assert response.json()["metadata"] == metadata


@pytest.mark.parametrize(
    "content_type", ["text/plain", None], ids=["text-plain", "no-content-type"]
)
async def test_a_body_that_is_not_utf8_is_422_not_a_500(
    api: httpx.AsyncClient, content_type: str | None
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}

    response = await api.post("/v1/watches", content=b'{"\xff\xfe": "\xc3"}', headers=headers)

    assert_small_422(response)
    await assert_nothing_stored(api)


@pytest.mark.parametrize(
    "fields",
    [
        {"policy": {"jitter": math.nan}},
        {"policy": {"max_attempts": math.inf}},
        {"metadata": {"x": [-math.inf]}},
        {"metadata": {"x": {"y": "\ud800"}}},
        {"metadata": {"\udc00": 1}},
        {"metadata": {"a": nested_list(MAX_METADATA_DEPTH)}},
    ],
    ids=["nan", "inf", "-inf-nested", "surrogate", "surrogate-key", "too-deep"],
)
def test_the_watch_model_refuses_what_json_cannot_carry(fields: dict[str, Any]) -> None:
    """The second line: a WatchCreate never holds what the store could not render back."""
    with pytest.raises(ValidationError):
        WatchCreate.model_validate({"status_url": STATUS_URL, **fields})


# -- item 10: body limits, authentication first, short excerpts ------------------------------


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
async def test_a_100_mb_body_is_413_after_reading_at_most_the_cap(
    api: httpx.AsyncClient, declared: bool
) -> None:
    upload = Upload(100 * 1024 * 1024)
    headers = {**JSON, **({"Content-Length": str(upload.total)} if declared else {})}

    response = await api.post("/v1/watches", content=upload, headers=headers)

    assert response.status_code == 413, response.text
    assert "detail" in response.json()
    assert len(response.content) < 200
    assert response.headers["connection"] == "close"
    assert upload.pulled == 0 if declared else upload.pulled <= MAX_BODY_BYTES + upload.chunk
    await assert_nothing_stored(api)


async def test_a_body_of_exactly_64_kib_is_read_and_one_byte_more_is_413(
    api: httpx.AsyncClient,
) -> None:
    document = json.dumps({"status_url": STATUS_URL}).encode()
    at_cap = document + b" " * (MAX_BODY_BYTES - len(document))

    accepted = await api.post("/v1/watches", content=at_cap, headers=JSON)
    refused = await api.post("/v1/watches", content=at_cap + b" ", headers=JSON)

    assert accepted.status_code == 201, accepted.text
    assert refused.status_code == 413, refused.text


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
@pytest.mark.parametrize(
    "authorization", [None, "Bearer nope", f"Basic {KEY_A}"], ids=["none", "unknown", "basic"]
)
async def test_without_a_valid_key_a_50_mb_body_is_401_before_a_byte_is_read(
    keyed: httpx.AsyncClient, declared: bool, authorization: str | None
) -> None:
    upload = Upload(50 * 1024 * 1024)
    headers = {**JSON, **({"Content-Length": str(upload.total)} if declared else {})}
    if authorization:
        headers["Authorization"] = authorization

    response = await keyed.post("/v1/watches", content=upload, headers=headers)

    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    assert "API key" in response.json()["detail"]
    assert upload.pulled == 0
    await assert_nothing_stored(keyed, headers={"Authorization": f"Bearer {KEY_A}"})


async def test_with_a_valid_key_an_oversized_body_is_413(keyed: httpx.AsyncClient) -> None:
    upload = Upload(50 * 1024 * 1024)
    headers = {**JSON, "Authorization": f"Bearer {KEY_A}", "Content-Length": str(upload.total)}

    response = await keyed.post("/v1/watches", content=upload, headers=headers)

    assert response.status_code == 413
    assert upload.pulled == 0


async def test_the_key_still_reaches_the_routes_and_health_needs_none(
    keyed: httpx.AsyncClient,
) -> None:
    as_a = {"Authorization": f"Bearer {KEY_A}"}
    created = await keyed.post("/v1/watches", json={"status_url": STATUS_URL}, headers=as_a)
    assert created.status_code == 201, created.text
    watch_id = created.json()["id"]

    assert (await keyed.get(f"/v1/watches/{watch_id}", headers=as_a)).status_code == 200
    as_b = {"Authorization": "Bearer key-b-0123456789abcdef"}
    assert (await keyed.get(f"/v1/watches/{watch_id}", headers=as_b)).status_code == 404
    assert (await keyed.get("/healthz")).status_code == 200
    assert (await keyed.get("/openapi.json")).status_code == 200


BIG = 60_000
HUGE_INPUTS = [
    ("status-url", {"status_url": "http://a.example/" + "a" * BIG}, ["body", "status_url"]),
    ("unknown-field-name", {"status_url": STATUS_URL, "x" * BIG: 1}, ["body", "x" * BIG]),
    ("unknown-field-value", {"status_url": STATUS_URL, "extra": "v" * BIG}, ["body", "extra"]),
    ("metadata", {"status_url": STATUS_URL, "metadata": {"k": "v" * BIG}}, ["body", "metadata"]),
    ("policy", {"status_url": STATUS_URL, "policy": {"jitter": "j" * BIG}}, None),
    ("body-list", ["x" * BIG], ["body"]),
    ("missing-field", {"webhook_url": "https://caller.example/h", "m": "m" * BIG}, None),
]


@pytest.mark.parametrize(
    ("body", "loc"), [case[1:] for case in HUGE_INPUTS], ids=[case[0] for case in HUGE_INPUTS]
)
async def test_a_422_echoes_only_a_short_excerpt_of_a_large_input(
    api: httpx.AsyncClient, body: Any, loc: list[str] | None
) -> None:
    response = await api.post("/v1/watches", json=body)

    detail = assert_small_422(response)
    for error in detail:
        echoed = error["input"]
        assert len(echoed if isinstance(echoed, str) else json.dumps(echoed)) <= EXCERPT_CHARS + 1
        assert all(len(str(part)) <= EXCERPT_CHARS + 1 for part in error["loc"])
    if loc is not None:
        assert [part[:20] for part in detail[0]["loc"]] == [part[:20] for part in loc]
    await assert_nothing_stored(api)


async def test_a_short_invalid_input_is_echoed_as_it_came(api: httpx.AsyncClient) -> None:
    response = await api.post(
        "/v1/watches", json={"status_url": STATUS_URL, "policy": {"jitter": 61}}
    )

    [error] = assert_small_422(response)
    assert error["loc"] == ["body", "policy", "jitter"]
    assert error["input"] == 61
    assert error["ctx"] == {"le": 60}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (math.nan, "nan"),
        (-math.inf, "-inf"),
        ("\ud800x", "\\ud800x"),
        (b"\xff", "\ufffd"),
        ({"k": "\ud800"}, '{"k":"\\ud800"}'),
        ("x" * 500, "x" * EXCERPT_CHARS + "…"),
        (10**200, "1" + "0" * (EXCERPT_CHARS - 1) + "…"),
        ([1, {"a": None}], [1, {"a": None}]),
    ],
    ids=["nan", "-inf", "surrogate", "bytes", "dict-surrogate", "long", "big-int", "short"],
)
def test_an_excerpt_is_short_and_json_safe(value: Any, expected: Any) -> None:
    from service.api.responses import excerpt

    got = excerpt(value)

    assert got == expected
    json.dumps(got, allow_nan=False).encode()


# -- item 13: API keys and the OpenAPI document ----------------------------------------------


def test_a_key_listed_for_two_tenants_is_refused_and_not_echoed(
    no_vtw_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VTW_API_KEYS", "a:shared-key-0123456789,b:shared-key-0123456789")

    with pytest.raises(ValidationError) as caught:
        Settings()

    described = describe_invalid(caught.value)
    assert "VTW_API_KEYS" in described and "'a'" in described and "'b'" in described
    assert "shared-key" not in described
    assert "shared-key" not in json.dumps(caught.value.errors(include_input=False), default=str)


def test_a_key_listed_twice_for_one_tenant_is_one_key(
    no_vtw_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VTW_API_KEYS", f"a:{KEY_A},a:{KEY_A}")

    assert Settings().api_keys == {KEY_A: "a"}


def test_short_keys_are_refused_beyond_loopback_only() -> None:
    from service.api.auth import check_key_length

    settings = Settings(api_keys={"k3y-a": "a", "b" * 16: "b"})

    with pytest.raises(SystemExit) as caught:
        check_key_length(settings, "0.0.0.0")

    message = str(caught.value)
    assert "VTW_API_KEYS" in message and "16" in message and "(tenants: a)" in message
    assert "k3y-a" not in message
    for loopback in ("127.0.0.1", "::1", "localhost"):
        check_key_length(settings, loopback)
    check_key_length(Settings(api_keys={"c" * 16: "c"}), "0.0.0.0")


def test_vtwatch_api_refuses_short_keys_off_loopback_before_serving(
    no_vtw_env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VTW_API_KEYS", "a:k3y-a")

    def serve(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("uvicorn started with a short key on 0.0.0.0")

    monkeypatch.setattr("uvicorn.run", serve)

    with pytest.raises(SystemExit) as caught:
        main(["api", "--host", "0.0.0.0", "--port", "1"])

    assert "VTW_API_KEYS" in str(caught.value)
    assert "k3y-a" not in str(caught.value) + capsys.readouterr().err


ERROR_RESPONSES = {
    ("/v1/watches", "post"): {"401", "409", "413", "422", "429", "503"},
    ("/v1/watches", "get"): {"401", "413", "422", "503"},
    ("/v1/watches/{watch_id}", "get"): {"401", "404", "413", "422", "503"},
    ("/v1/watches/{watch_id}", "delete"): {"401", "404", "409", "413", "422", "503"},
    ("/v1/status", "get"): {"401", "413", "422", "503"},
    ("/v1/watches/{watch_id}/deliveries", "get"): {"401", "404", "413", "422", "503"},
    ("/v1/watches/{watch_id}/deliveries/retry", "post"): {"401", "404", "409", "422", "503"},
    ("/v1/webhook-secret", "get"): {"401", "413", "422", "503"},
    ("/v1/webhook-secret/rotate", "post"): {"401", "413", "422", "503"},
}


async def test_openapi_declares_the_bearer_scheme_and_the_error_answers(
    api: httpx.AsyncClient,
) -> None:
    schema = (await api.get("/openapi.json")).json()
    components = schema["components"]

    assert components["securitySchemes"]["HTTPBearer"]["type"] == "http"
    assert components["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    for (path, method), codes in ERROR_RESPONSES.items():
        operation = schema["paths"][path][method]
        assert {"HTTPBearer": []} in operation["security"], (path, method)
        assert codes <= set(operation["responses"]), (path, method)
        for code in codes:
            content = operation["responses"][code]["content"]["application/json"]
            name = content["schema"]["$ref"].rpartition("/")[2]
            assert "detail" in components["schemas"][name]["properties"], (path, method, code)
    assert "503" in schema["paths"]["/readyz"]["get"]["responses"]
    assert "security" not in schema["paths"]["/healthz"]["get"]
