"""The v1 HTTP API against DESIGN.md: shapes, auth, validation, idempotency, paging, outages."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from service.api.auth import check_open_mode
from service.api.schemas import render_summary
from service.settings import Settings
from tests.service_fixtures import ApiFactory, down_redis

STATUS_URL = "http://translate-1:5000/status"
BODY = {"status_url": STATUS_URL}
KEYS = {"key-a": "a", "key-b": "b"}
AS_A = {"Authorization": "Bearer key-a"}
AS_B = {"Authorization": "Bearer key-b"}
WATCH_FIELDS = {
    "id", "state", "reason", "status_url", "webhook_url", "metadata", "policy", "attempts",
    "last_result", "last_error", "progress", "created_at", "updated_at", "last_polled_at",
    "next_poll_at", "deadline", "finished_at", "webhook", "upstream", "result", "result_truncated",
}  # fmt: skip
DEFAULT_POLICY = {
    "initial_wait_time": 1.0,
    "backoff_factor": 2.0,
    "jitter": 0.5,
    "max_interval": 60,
    "max_wait_time": 3600,
    "max_attempts": None,
    "adaptive": True,
}


def utc(value: str) -> datetime:
    moment = datetime.fromisoformat(value)
    assert moment.utcoffset() == timedelta(0), value
    return moment


async def create(client: httpx.AsyncClient, body: Any = None, **kwargs: Any) -> dict[str, Any]:
    response = await client.post("/v1/watches", json=BODY if body is None else body, **kwargs)
    assert response.status_code == 201, response.text
    watch: dict[str, Any] = response.json()
    return watch


async def create_in_order(client: httpx.AsyncClient, n: int, **kwargs: Any) -> list[str]:
    """Register n watches a millisecond or more apart (ids order by millisecond)."""
    ids = []
    for _ in range(n):
        ids.append((await create(client, **kwargs))["id"])
        await asyncio.sleep(0.002)
    return ids


@pytest.fixture
async def keyed(make_api: ApiFactory) -> httpx.AsyncClient:
    """The API with two tenants, `a` (key-a) and `b` (key-b); no default credentials."""
    return await make_api(Settings(api_keys=KEYS))


# -- the Watch ------------------------------------------------------------------------------


async def test_register_answers_201_with_the_whole_watch_and_default_policy(
    api: httpx.AsyncClient,
) -> None:
    response = await api.post("/v1/watches", json=BODY)

    assert response.status_code == 201
    watch = response.json()
    assert set(watch) == WATCH_FIELDS
    assert watch["id"]
    assert watch["state"] == "pending"
    assert watch["status_url"] == STATUS_URL
    assert watch["policy"] == DEFAULT_POLICY
    assert watch["metadata"] == {}
    assert watch["attempts"] == 0
    for unset in ("reason", "webhook_url", "last_result", "last_error", "progress"):
        assert watch[unset] is None, unset
    assert watch["last_polled_at"] is None
    assert watch["finished_at"] is None
    assert watch["webhook"] == {"state": "none", "attempts": 0, "last_status_code": None}
    created = utc(watch["created_at"])
    assert abs(created - datetime.now(UTC)) < timedelta(minutes=1)
    assert utc(watch["updated_at"]) == created
    assert utc(watch["next_poll_at"]) == created  # due at once
    assert utc(watch["deadline"]) == created + timedelta(seconds=3600)


async def test_register_keeps_every_field_it_was_given(api: httpx.AsyncClient) -> None:
    policy = {
        "initial_wait_time": 0.5,
        "backoff_factor": 1.5,
        "jitter": 0,
        "max_interval": 10,
        "max_wait_time": 120,
        "max_attempts": 7,
        "adaptive": False,
    }
    body = {
        "status_url": "https://translate-2.example/jobs/42/status",
        "webhook_url": "https://caller.example/hooks",
        "policy": policy,
        "metadata": {"video": "abc.mp4", "nested": {"n": [1, 2]}},
    }

    watch = await create(api, body)

    assert {name: watch[name] for name in body} == body
    assert utc(watch["deadline"]) == utc(watch["created_at"]) + timedelta(seconds=120)


async def test_get_list_cancel_and_status_of_a_watch(api: httpx.AsyncClient) -> None:
    kept = await create(api)
    doomed = await create(api)

    got = await api.get(f"/v1/watches/{doomed['id']}")
    assert got.status_code == 200
    assert got.json() == doomed

    cancelled = await api.delete(f"/v1/watches/{doomed['id']}")
    assert cancelled.status_code == 200
    body = cancelled.json()
    assert set(body) == WATCH_FIELDS
    assert body["state"] == "cancelled"
    assert body["next_poll_at"] is None
    assert utc(body["finished_at"]) >= utc(doomed["created_at"])
    assert (await api.get(f"/v1/watches/{doomed['id']}")).json() == body

    listed = (await api.get("/v1/watches")).json()
    assert {w["id"] for w in listed["items"]} == {kept["id"], doomed["id"]}
    assert listed["next_cursor"] is None

    status = await api.get("/v1/status")
    assert status.status_code == 200
    assert status.json() == {
        "total": 2,
        "by_state": {"pending": 1, "completed": 0, "error": 0, "timeout": 0, "cancelled": 1},
        "webhooks": {"pending": 0, "delivered": 0, "failed": 0},
    }


async def test_cancel_of_an_ended_watch_is_409(api: httpx.AsyncClient) -> None:
    watch = await create(api)
    assert (await api.delete(f"/v1/watches/{watch['id']}")).status_code == 200

    again = await api.delete(f"/v1/watches/{watch['id']}")

    assert again.status_code == 409
    assert "cancelled" in again.json()["detail"]


async def test_status_of_a_new_tenant_is_all_zeros(api: httpx.AsyncClient) -> None:
    summary = (await api.get("/v1/status")).json()

    assert summary["total"] == 0
    assert set(summary["by_state"]) == {"pending", "completed", "error", "timeout", "cancelled"}
    assert set(summary["by_state"].values()) == {0}
    assert summary["webhooks"] == {"pending": 0, "delivered": 0, "failed": 0}


@pytest.mark.parametrize("method", ["GET", "DELETE"])
async def test_unknown_watch_is_404(api: httpx.AsyncClient, method: str) -> None:
    response = await api.request(method, "/v1/watches/w_000000000000nosuchwatch")

    assert response.status_code == 404
    assert "not found" in response.json()["detail"]


# -- auth and tenants -----------------------------------------------------------------------


async def test_another_tenants_watch_is_404_never_403(keyed: httpx.AsyncClient) -> None:
    watch = await create(keyed, headers=AS_A)

    assert (await keyed.get(f"/v1/watches/{watch['id']}", headers=AS_B)).status_code == 404
    assert (await keyed.delete(f"/v1/watches/{watch['id']}", headers=AS_B)).status_code == 404
    assert (await keyed.get("/v1/watches", headers=AS_B)).json()["items"] == []
    assert (await keyed.get("/v1/status", headers=AS_B)).json()["total"] == 0
    mine = await keyed.get(f"/v1/watches/{watch['id']}", headers=AS_A)
    assert mine.status_code == 200
    assert mine.json()["state"] == "pending"  # b's cancel changed nothing


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer nope"},
        {"Authorization": "Bearer "},
        {"Authorization": "Basic key-a"},
        {"Authorization": "key-a"},
    ],
    ids=["none", "unknown", "empty", "other-scheme", "no-scheme"],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v1/watches"), ("GET", "/v1/watches"), ("GET", "/v1/status")],
)
async def test_missing_or_unknown_key_is_401(
    keyed: httpx.AsyncClient, headers: dict[str, str], method: str, path: str
) -> None:
    response = await keyed.request(method, path, headers=headers, json=BODY)

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert "API key" in response.json()["detail"]


async def test_api_keys_from_the_environment_map_keys_to_tenants(
    make_api: ApiFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VTW_API_KEYS", " a:key-a , b:key-b ")
    settings = Settings()
    assert settings.api_keys == KEYS

    client = await make_api(settings)
    watch = await create(client, headers=AS_A)
    assert (await client.get(f"/v1/watches/{watch['id']}", headers=AS_A)).status_code == 200
    assert (await client.get(f"/v1/watches/{watch['id']}", headers=AS_B)).status_code == 404
    assert (await client.get("/v1/watches")).status_code == 401


@pytest.mark.parametrize("value", ["key-without-tenant", "a:", ":key", "bad tenant:key"])
def test_malformed_api_keys_are_refused_at_start(
    no_vtw_env: None, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("VTW_API_KEYS", value)

    with pytest.raises(ValidationError, match="api_keys"):
        Settings()


def test_open_mode_is_refused_off_loopback(no_vtw_env: None) -> None:
    with pytest.raises(SystemExit, match=r"0\.0\.0\.0"):
        check_open_mode(Settings(), "0.0.0.0")
    check_open_mode(Settings(), "127.0.0.1")
    check_open_mode(Settings(), "::1")
    check_open_mode(Settings(), "localhost")
    check_open_mode(Settings(api_keys=KEYS), "0.0.0.0")


# -- bad input ------------------------------------------------------------------------------


def with_policy(**policy: Any) -> dict[str, Any]:
    return {**BODY, "policy": policy}


def metadata_of_size(size: int) -> dict[str, str]:
    """A metadata object whose compact JSON is exactly `size` bytes."""
    overhead = len('{"k":""}')
    return {"k": "x" * (size - overhead)}


BAD_BODIES = [
    ("ftp-url", {"status_url": "ftp://translate-1/status"}, ["body", "status_url"]),
    ("not-a-url", {"status_url": "translate-1:5000"}, ["body", "status_url"]),
    ("bad-webhook", {**BODY, "webhook_url": "file:///etc/passwd"}, ["body", "webhook_url"]),
    ("no-status-url", {"webhook_url": "https://caller.example/h"}, ["body", "status_url"]),
    ("unknown-field", {**BODY, "callback": "x"}, ["body", "callback"]),
    ("unknown-policy-field", with_policy(retries=3), ["body", "policy", "retries"]),
    ("policy-not-object", {**BODY, "policy": 3}, ["body", "policy"]),
    ("metadata-list", {**BODY, "metadata": ["a"]}, ["body", "metadata"]),
    ("metadata-string", {**BODY, "metadata": "abc"}, ["body", "metadata"]),
    ("metadata-4097-bytes", {**BODY, "metadata": metadata_of_size(4097)}, ["body", "metadata"]),
    ("body-not-object", [BODY], ["body"]),
]
POLICY_BOUNDS = {
    "initial_wait_time": (0.05, 3600),
    "backoff_factor": (1, 10),
    "jitter": (0, 60),
    "max_interval": (0.05, 86400),
    "max_wait_time": (0.1, 30 * 86400),
    "max_attempts": (1, 100_000),
}
OUTSIDE_BOUNDS = [
    ("initial_wait_time", 0.04),
    ("initial_wait_time", 3601),
    ("backoff_factor", 0.9),
    ("backoff_factor", 11),
    ("jitter", -1),
    ("jitter", 61),
    ("max_interval", 0.04),
    ("max_interval", 86401),
    ("max_wait_time", 0.09),
    ("max_wait_time", 30 * 86400 + 1),
    ("max_attempts", 0),
    ("max_attempts", 100_001),
    ("max_attempts", 1.5),
    ("jitter", "lots"),
    ("adaptive", "yes"),
    ("adaptive", 1),
]


@pytest.mark.parametrize(
    ("body", "loc"), [case[1:] for case in BAD_BODIES], ids=[case[0] for case in BAD_BODIES]
)
async def test_bad_input_is_422_naming_the_field(
    api: httpx.AsyncClient, body: Any, loc: list[str]
) -> None:
    response = await api.post("/v1/watches", json=body)

    assert response.status_code == 422, response.text
    assert loc in [error["loc"] for error in response.json()["detail"]]
    assert (await api.get("/v1/status")).json()["total"] == 0


@pytest.mark.parametrize(("field", "value"), OUTSIDE_BOUNDS)
async def test_policy_outside_its_bounds_is_422_naming_the_field(
    api: httpx.AsyncClient, field: str, value: Any
) -> None:
    response = await api.post("/v1/watches", json=with_policy(**{field: value}))

    assert response.status_code == 422, response.text
    assert [error["loc"] for error in response.json()["detail"]] == [["body", "policy", field]]


@pytest.mark.parametrize("end", [0, 1], ids=["lowest", "highest"])
async def test_policy_at_its_bounds_is_accepted(api: httpx.AsyncClient, end: int) -> None:
    policy = {field: bounds[end] for field, bounds in POLICY_BOUNDS.items()}

    watch = await create(api, with_policy(**policy))

    assert watch["policy"] == {**policy, "adaptive": True}


async def test_metadata_of_exactly_4_kib_is_accepted(api: httpx.AsyncClient) -> None:
    metadata = metadata_of_size(4096)

    watch = await create(api, {**BODY, "metadata": metadata})

    assert watch["metadata"] == metadata


@pytest.mark.parametrize("content", [b'{"status_url": ', b"not json", b""])
async def test_malformed_json_is_422(api: httpx.AsyncClient, content: bytes) -> None:
    response = await api.post(
        "/v1/watches", content=content, headers={"Content-Type": "application/json"}
    )

    assert response.status_code == 422
    assert all(error["loc"][0] == "body" for error in response.json()["detail"])


@pytest.mark.parametrize(
    ("query", "loc"),
    [
        ("limit=0", ["query", "limit"]),
        ("limit=501", ["query", "limit"]),
        ("limit=ten", ["query", "limit"]),
        ("state=running", ["query", "state"]),
        ("cursor=not%20an%20id", ["query", "cursor"]),
    ],
)
async def test_bad_list_query_is_422_naming_the_parameter(
    api: httpx.AsyncClient, query: str, loc: list[str]
) -> None:
    response = await api.get(f"/v1/watches?{query}")

    assert response.status_code == 422
    assert [error["loc"] for error in response.json()["detail"]] == [loc]


async def test_malformed_watch_id_is_422(api: httpx.AsyncClient) -> None:
    response = await api.get("/v1/watches/not%20an%20id")

    assert response.status_code == 422
    assert [error["loc"] for error in response.json()["detail"]] == [["path", "watch_id"]]


BLOCKED_URLS = [
    ({"status_url": "http://127.0.0.1:5000/status"}, ["body", "status_url"]),
    ({"status_url": "http://localhost:5000/status"}, ["body", "status_url"]),
    ({"status_url": "http://[::1]:5000/status"}, ["body", "status_url"]),
    ({"status_url": "http://10.1.2.3/status"}, ["body", "status_url"]),
    ({**BODY, "webhook_url": "http://169.254.169.254/latest/meta-data"}, ["body", "webhook_url"]),
]


@pytest.mark.parametrize(("body", "loc"), BLOCKED_URLS)
async def test_url_to_a_blocked_network_is_422_naming_the_field(
    api: httpx.AsyncClient, body: dict[str, Any], loc: list[str]
) -> None:
    response = await api.post("/v1/watches", json=body)

    assert response.status_code == 422, response.text
    assert [error["loc"] for error in response.json()["detail"]] == [loc]
    assert (await api.get("/v1/status")).json()["total"] == 0


async def test_an_allowed_network_admits_its_urls(make_api: ApiFactory) -> None:
    client = await make_api(Settings(allowed_networks="127.0.0.0/8,::1/128"))

    watch = await create(client, {"status_url": "http://127.0.0.1:5000/status"})

    assert watch["status_url"] == "http://127.0.0.1:5000/status"


# -- idempotency ----------------------------------------------------------------------------


async def test_same_idempotency_key_and_body_answers_200_with_the_same_watch(
    api: httpx.AsyncClient,
) -> None:
    first = await api.post("/v1/watches", json=BODY, headers={"Idempotency-Key": "job-1"})
    again = await api.post("/v1/watches", json=BODY, headers={"Idempotency-Key": "job-1"})

    assert first.status_code == 201
    assert again.status_code == 200
    assert again.json() == first.json()
    assert (await api.get("/v1/status")).json()["total"] == 1


async def test_same_idempotency_key_and_equivalent_body_is_the_same_request(
    api: httpx.AsyncClient,
) -> None:
    first = await create(
        api, {**BODY, "metadata": {"a": 1, "b": 2}}, headers={"Idempotency-Key": "k"}
    )
    explicit = {"metadata": {"b": 2, "a": 1}, "policy": DEFAULT_POLICY, **BODY}

    again = await api.post("/v1/watches", json=explicit, headers={"Idempotency-Key": "k"})

    assert again.status_code == 200
    assert again.json()["id"] == first["id"]


async def test_same_idempotency_key_with_another_body_is_409(api: httpx.AsyncClient) -> None:
    first = await create(api, headers={"Idempotency-Key": "job-1"})

    other = await api.post(
        "/v1/watches", json=with_policy(jitter=0), headers={"Idempotency-Key": "job-1"}
    )

    assert other.status_code == 409
    assert first["id"] in other.json()["detail"]
    assert (await api.get("/v1/status")).json()["total"] == 1


async def test_without_idempotency_key_each_request_creates_a_watch(
    api: httpx.AsyncClient,
) -> None:
    first = await create(api)
    second = await create(api)

    assert first["id"] != second["id"]


async def test_idempotency_keys_of_different_tenants_are_independent(
    keyed: httpx.AsyncClient,
) -> None:
    a = await create(keyed, headers={**AS_A, "Idempotency-Key": "job-1"})
    b = await create(keyed, with_policy(jitter=0), headers={**AS_B, "Idempotency-Key": "job-1"})

    assert a["id"] != b["id"]
    assert (await keyed.get(f"/v1/watches/{b['id']}", headers=AS_B)).json() == b


# -- listing --------------------------------------------------------------------------------


async def test_list_pages_return_every_watch_once_newest_first(api: httpx.AsyncClient) -> None:
    ids = await create_in_order(api, 5)

    seen: list[str] = []
    pages = 0
    url = "/v1/watches?limit=2"
    while True:
        response = await api.get(url)
        assert response.status_code == 200
        page = response.json()
        assert set(page) == {"items", "next_cursor"}
        pages += 1
        seen += [watch["id"] for watch in page["items"]]
        if page["next_cursor"] is None:
            break
        url = f"/v1/watches?limit=2&cursor={page['next_cursor']}"

    assert seen == ids[::-1]
    assert pages == 3


async def test_list_of_exactly_limit_items_has_no_next_cursor(api: httpx.AsyncClient) -> None:
    ids = await create_in_order(api, 3)

    page = (await api.get("/v1/watches?limit=3")).json()

    assert [watch["id"] for watch in page["items"]] == ids[::-1]
    assert page["next_cursor"] is None


async def test_list_filters_by_state(api: httpx.AsyncClient) -> None:
    ids = await create_in_order(api, 3)
    await api.delete(f"/v1/watches/{ids[1]}")

    def listed(page: httpx.Response) -> list[tuple[str, str]]:
        return [(watch["id"], watch["state"]) for watch in page.json()["items"]]

    cancelled = await api.get("/v1/watches?state=cancelled")
    pending = await api.get("/v1/watches?state=pending&limit=1")
    completed = await api.get("/v1/watches?state=completed")

    assert listed(cancelled) == [(ids[1], "cancelled")]
    assert listed(pending) == [(ids[2], "pending")]
    rest = await api.get(f"/v1/watches?state=pending&cursor={pending.json()['next_cursor']}")
    assert listed(rest) == [(ids[0], "pending")]
    assert rest.json()["next_cursor"] is None
    assert completed.json() == {"items": [], "next_cursor": None}


# -- health and outages ---------------------------------------------------------------------


async def test_healthz_and_readyz_answer_200_when_redis_answers(api: httpx.AsyncClient) -> None:
    for path in ("/healthz", "/readyz"):
        response = await api.get(path)
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/watches"),
        ("GET", "/v1/watches"),
        ("GET", "/v1/watches/w_000000000000nosuchwatch"),
        ("DELETE", "/v1/watches/w_000000000000nosuchwatch"),
        ("GET", "/v1/status"),
    ],
)
async def test_redis_down_is_503_with_a_clear_detail(
    make_api: ApiFactory, method: str, path: str
) -> None:
    client = await make_api(redis=down_redis())

    response = await client.request(method, path, json=BODY)

    assert response.status_code == 503
    assert response.json() == {
        "detail": "storage unavailable: Redis cannot be reached or cannot take writes; retry later"
    }
    assert response.headers["retry-after"] == "1"
    assert "Traceback" not in response.text


async def test_redis_down_fails_readiness_not_liveness(make_api: ApiFactory) -> None:
    client = await make_api(redis=down_redis())

    ready = await client.get("/readyz")
    alive = await client.get("/healthz")

    assert ready.status_code == 503
    assert ready.json() == {"status": "unavailable"}
    assert alive.status_code == 200


# -- the schema -----------------------------------------------------------------------------


async def test_openapi_lists_the_routes_and_describes_the_watch(api: httpx.AsyncClient) -> None:
    schema = (await api.get("/openapi.json")).json()

    routes = {(path, method) for path, ops in schema["paths"].items() for method in ops}
    assert {
        ("/v1/watches", "post"),
        ("/v1/watches", "get"),
        ("/v1/watches/{watch_id}", "get"),
        ("/v1/watches/{watch_id}", "delete"),
        ("/v1/status", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
    } <= routes
    watch = schema["components"]["schemas"]["Watch"]
    assert set(watch["properties"]) == WATCH_FIELDS
    assert watch["properties"]["attempts"]["description"]
    post = schema["paths"]["/v1/watches"]["post"]
    assert {"200", "201", "409", "422"} <= set(post["responses"])


def test_the_summary_shows_counts_as_stored_so_drift_is_visible() -> None:
    """A count the scripts let go negative is a bug to see, not to hide (item 17 of #8)."""
    summary = render_summary({"pending": -1, "completed": 3, "wh:failed": -2})

    assert summary.by_state["pending"] == -1 and summary.total == 2
    assert summary.webhooks.failed == -2
