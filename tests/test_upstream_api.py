"""Upstreams through the service: registration (422s naming the field, never echoing a header
value), sealed headers at rest (nowhere in Redis in clear), the presets route, idempotent
replays, and the worker polling with the opened headers (or ending the watch when it cannot
open them). fakeredis and the real Redis."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer

from client.presets import PRESETS
from service.api.routes.watches import _stored_upstream
from service.api.schemas import WatchCreate
from service.sealing import NOT_CONFIGURED_DETAIL, UNREADABLE_DETAIL, Sealer, generate_key
from service.settings import Settings
from service.store.codec import HEADER_NAMES, SEALED_HEADERS
from service.store.watches import Store
from tests.service_fixtures import (
    ApiFactory,
    delete_namespace,
    fake_redis,
    real_redis_or_skip,
)
from tests.test_upstream_rules import BAD_HEADERS, INVALID
from worker.poller import Poller

SECRET = "s3cret-Value-42"
KEYS = {"key-a": "a"}
AS_A = {"Authorization": "Bearer key-a"}
STATUS_URL = "http://translate-1:5000/v1/video_status.get?video_id=v1"
WITH_HEADERS = {
    "status_url": STATUS_URL,
    "upstream": {"preset": "heygen", "headers": {"X-Api-Key": SECRET}},
}


@dataclass
class Env:
    api: httpx.AsyncClient
    redis: aioredis.Redis
    store: Store
    settings: Settings
    namespace: str

    async def register(self, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
        # JSON as the standard library writes it: ASCII, lone surrogates escaped
        return await self.api.post(
            "/v1/watches",
            content=json.dumps(body),
            headers={"Content-Type": "application/json", **(headers or AS_A)},
        )


EnvFactory = Callable[..., Awaitable[Env]]


@pytest.fixture(params=["fakeredis", "redis"])
async def make_env(
    request: pytest.FixtureRequest, make_api: ApiFactory
) -> AsyncIterator[EnvFactory]:
    made: list[tuple[aioredis.Redis, str]] = []

    async def start(sealing: bool = True, **settings: Any) -> Env:
        if request.param == "fakeredis":
            client = fake_redis()
        else:
            client = await real_redis_or_skip(decode_responses=True)
        namespace = "t" + secrets.token_hex(6)
        made.append((client, namespace))
        if sealing:
            settings.setdefault("secret_keys", generate_key())
        config = Settings(namespace=namespace, api_keys=KEYS, **settings)
        api = await make_api(config, redis=client)
        return Env(api, client, Store(client, namespace=namespace), config, namespace)

    yield start
    for client, namespace in made:
        await delete_namespace(client, namespace)


def loc_of(field: str) -> list[str | int]:
    """`upstream.rules[2].path` as a 422's loc: body, upstream, rules, 2, path."""
    loc: list[str | int] = ["body"]
    if field.startswith("upstream.headers."):
        return [*loc, "upstream", "headers", field.removeprefix("upstream.headers.")]
    for part in field.split("."):
        name, _, index = part.partition("[")
        loc.append(name)
        if index:
            loc.append(int(index.rstrip("]")))
    return loc


def assert_no_secret(response: httpx.Response, secret: str = SECRET) -> None:
    assert secret not in response.text
    assert secret not in json.dumps(dict(response.headers))


# -- 422s ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "field"), INVALID, ids=[field for _, field in INVALID])
async def test_an_invalid_upstream_is_a_422_naming_its_field(
    make_env: EnvFactory, spec: dict[str, Any], field: str
) -> None:
    env = await make_env()
    upstream = {**spec, "headers": {"X-Api-Key": SECRET}}
    response = await env.register({"status_url": STATUS_URL, "upstream": upstream})
    assert response.status_code == 422, response.text
    locs = [item["loc"] for item in response.json()["detail"]]
    assert loc_of(field) in locs, locs
    assert_no_secret(response)


@pytest.mark.parametrize(("headers", "field"), BAD_HEADERS, ids=[f for _, f in BAD_HEADERS])
async def test_refused_headers_are_a_422_naming_the_header_never_its_value(
    make_env: EnvFactory, headers: dict[str, Any], field: str
) -> None:
    env = await make_env()
    response = await env.register({"status_url": STATUS_URL, "upstream": {"headers": headers}})
    assert response.status_code == 422, response.text
    assert_no_secret(response)
    [item] = response.json()["detail"]
    if any("\ud800" in str(value) for value in headers.values()):
        assert item["type"] == "json_invalid"  # a lone surrogate: not JSON the API reads
        return
    assert item["loc"] == loc_of(field)


@pytest.mark.parametrize("name", ["X.Api.Key", "x[1]", "Bad Name.v2"])
async def test_a_refused_header_with_dots_or_brackets_is_named_whole(
    make_env: EnvFactory, name: str
) -> None:
    env = await make_env()
    headers = {name: SECRET + "\r\n"}
    response = await env.register({"status_url": STATUS_URL, "upstream": {"headers": headers}})
    assert response.status_code == 422, response.text
    [item] = response.json()["detail"]
    assert item["loc"] == ["body", "upstream", "headers", name]
    assert_no_secret(response)


async def test_headers_without_secret_keys_are_a_422_saying_what_to_set(
    make_env: EnvFactory,
) -> None:
    env = await make_env(sealing=False)
    response = await env.register(WITH_HEADERS)
    assert response.status_code == 422
    [item] = response.json()["detail"]
    assert item["loc"] == ["body", "upstream", "headers"]
    assert item["msg"] == NOT_CONFIGURED_DETAIL and "VTW_SECRET_KEYS" in item["msg"]
    assert_no_secret(response)
    # without headers, no key is needed
    plain = await env.register({"status_url": STATUS_URL, "upstream": {"preset": "heygen"}})
    assert plain.status_code == 201, plain.text
    assert plain.json()["upstream"]["headers"] == {}


ELSEWHERE: list[Any] = [
    {"upstream": {"headers": {"X-Api-Key": SECRET}}},  # no status_url: the whole body echoed
    {"upstream": {"headers": {"X-Api-Key": SECRET}}, "status_url": "not a url"},
    {"upstream": {"headers": {"X-Api-Key": SECRET}, "bogus": 1}, "status_url": STATUS_URL},
    {"upstream": {"headers": {"X-Api-Key": SECRET, "X-Other": 5}}, "status_url": STATUS_URL},
    {"upstream": {"headers": [["X-Api-Key", SECRET]]}},
    {"upstream": {"headers": SECRET}},
    {"upstream": {"headers": {"X-Api-Key": SECRET}}, "policy": {"max_wait_time": -1}},
    {"upstream": {"headers": {"X-Api-Key": SECRET}}, "extra": True},
    {"upstream": {"headers": {"X-Api-Key": SECRET}, "preset": 7}},
    {"upstream": [{"headers": {"X-Api-Key": SECRET}}], "status_url": STATUS_URL},
    [{"upstream": {"headers": {"X-Api-Key": SECRET}}, "status_url": STATUS_URL}],
    [[{"upstream": {"headers": {"X-Api-Key": SECRET}}}]],
    {"metadata": {"k": "v"}, "upstream": {"headers": {"X-Api-Key": SECRET}}, "policy": 1},
]


@pytest.mark.parametrize("body", ELSEWHERE, ids=range(len(ELSEWHERE)))
async def test_no_422_echoes_a_header_value_whatever_is_wrong(
    make_env: EnvFactory, body: Any
) -> None:
    env = await make_env()
    response = await env.register(body)
    assert response.status_code == 422, response.text
    assert_no_secret(response)


async def test_a_blocked_status_url_with_headers_echoes_no_header_value(
    make_env: EnvFactory,
) -> None:
    env = await make_env(allowed_networks="10.0.0.0/8")
    body = {**WITH_HEADERS, "status_url": "http://127.0.0.1:9/status"}
    response = await env.register(body)
    assert response.status_code == 422, response.text
    assert_no_secret(response)


# -- sealed headers at rest ------------------------------------------------------------------


async def everything_in(client: aioredis.Redis, namespace: str | None) -> list[str]:
    """Every key and every value (of any type) of the namespace (None: the whole database)."""
    match = f"vtw:{{{namespace}*" if namespace else None
    seen: list[Any] = []
    async for key in client.scan_iter(match=match, count=500):
        seen.append(key)
        kind: Any = await client.type(key)
        found: Any
        if kind == "string":
            seen.append(await client.get(key))
        elif kind == "hash":
            found = await client.hgetall(key)
            for field, value in found.items():
                seen += [field, value]
        elif kind == "zset":
            found = await client.zrange(key, 0, -1)
            seen += found
        elif kind == "set":
            found = await client.smembers(key)
            seen += list(found)
        elif kind == "list":
            found = await client.lrange(key, 0, -1)
            seen += found
        elif kind == "stream":
            found = await client.xrange(key)
            for entry_id, fields in found:
                seen.append(entry_id)
                for field, value in fields.items():
                    seen += [field, value]
        else:
            raise AssertionError(f"a key of type {kind!r}: read it too")
    return [str(item) for item in seen]


async def test_headers_are_shown_masked_and_stored_only_sealed(make_env: EnvFactory) -> None:
    env = await make_env()
    body = {
        **WITH_HEADERS,
        "webhook_url": "http://receiver:8080/hook",
        "upstream": {"preset": "heygen", "headers": {"X-Api-Key": SECRET, "X-Team": "t-1"}},
    }
    created = await env.register(body, headers={**AS_A, "Idempotency-Key": "k1"})
    assert created.status_code == 201, created.text
    watch = created.json()
    masked = {"X-Api-Key": "***", "X-Team": "***"}
    assert watch["upstream"]["headers"] == masked and watch["upstream"]["preset"] == "heygen"
    assert_no_secret(created)

    got = await env.api.get(f"/v1/watches/{watch['id']}", headers=AS_A)
    assert got.status_code == 200 and got.json()["upstream"] == watch["upstream"]
    listed = await env.api.get("/v1/watches", headers=AS_A)
    [item] = listed.json()["items"]
    assert item["upstream"] == watch["upstream"]
    for response in (got, listed):
        assert_no_secret(response)
    for path in ("/v1/status", "/metrics"):
        assert_no_secret(await env.api.get(path, headers=AS_A))

    namespace = None if isinstance(env.redis, type(fake_redis())) else env.namespace
    stored = await everything_in(env.redis, namespace)
    assert len(stored) > 2
    for text in stored:
        assert SECRET not in text and "t-1" not in text

    doc = await env.store.get("a", watch["id"])
    spec = json.loads(doc["spec"])
    upstream = spec["upstream"]
    assert upstream[HEADER_NAMES] == ["X-Api-Key", "X-Team"]
    assert "headers" not in upstream
    sealer = Sealer.from_settings(env.settings)
    assert sealer is not None
    assert sealer.open(upstream[SEALED_HEADERS]) == {"X-Api-Key": SECRET, "X-Team": "t-1"}
    assert re.fullmatch(r"[A-Za-z0-9_=-]+", upstream[SEALED_HEADERS])
    assert any(upstream[SEALED_HEADERS] in text for text in stored)  # the scan read the spec


async def test_an_idempotent_replay_with_headers_answers_the_same_watch(
    make_env: EnvFactory,
) -> None:
    env = await make_env()
    key = {**AS_A, "Idempotency-Key": "replay-1"}
    first = await env.register(WITH_HEADERS, headers=key)
    again = await env.register(WITH_HEADERS, headers=key)
    assert (first.status_code, again.status_code) == (201, 200), again.text
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["upstream"] == first.json()["upstream"]
    other_secret = {**WITH_HEADERS, "upstream": {"preset": "heygen", "headers": {"X-Api-Key": "x"}}}
    conflict = await env.register(other_secret, headers=key)
    assert conflict.status_code == 409
    assert_no_secret(conflict)


async def test_presets_need_the_api_key_and_list_all_seven(make_env: EnvFactory) -> None:
    env = await make_env()
    refused = await env.api.get("/v1/presets")
    assert refused.status_code == 401
    response = await env.api.get("/v1/presets", headers=AS_A)
    assert response.status_code == 200
    presets = response.json()
    assert set(presets) == set(PRESETS) and len(presets) == 7
    for name, preset in presets.items():
        assert preset["rules"] == PRESETS[name]["rules"], name
        assert set(preset["assumes"]) == {"pending", "completed", "error"}


async def test_a_registration_may_name_each_preset(make_env: EnvFactory) -> None:
    env = await make_env()
    for name in PRESETS:
        response = await env.register({"status_url": STATUS_URL, "upstream": {"preset": name}})
        assert response.status_code == 201, response.text
        assert response.json()["upstream"]["preset"] == name


# -- the worker ------------------------------------------------------------------------------


class HeyGen:
    """A local HeyGen: 401 without the right X-Api-Key, else processing, then completed."""

    def __init__(self, key: str = SECRET, pending_polls: int = 1) -> None:
        self.key = key
        self.pending_polls = pending_polls
        self.requests: list[str | None] = []
        self.app = web.Application()
        self.app.router.add_get("/v1/video_status.get", self.status)

    async def status(self, request: web.Request) -> web.Response:
        given = request.headers.get("X-Api-Key")
        self.requests.append(given)
        if given != self.key:
            return web.json_response({"code": 401, "message": "Unauthorized"}, status=401)
        video = request.query.get("video_id", "")
        done = sum(1 for seen in self.requests if seen == self.key) > self.pending_polls
        data: dict[str, Any] = {"video_id": video, "status": "processing", "video_url": None}
        if done:
            data |= {"status": "completed", "video_url": f"https://cdn.example/{video}.mp4"}
        return web.json_response({"code": 100, "data": data, "message": "Success"})


def worker_settings(**values: Any) -> Settings:
    return Settings.model_validate({"min_poll_interval": 0.05, **values})


async def register_with_headers(
    store: Store, api_settings: Settings, url: str, headers: dict[str, str]
) -> str:
    body = WatchCreate.model_validate(
        {
            "status_url": url,
            "policy": {"initial_wait_time": 0.05, "max_interval": 0.1, "adaptive": False},
            "upstream": {"preset": "heygen", "headers": headers},
        }
    )
    spec = body.spec()
    assert body.upstream is not None
    spec["upstream"] = _stored_upstream(body.upstream, api_settings)
    doc, created = await store.register("a", spec, 10)
    assert created
    return str(doc["id"])


async def poll_until_ended(store: Store, poller: Poller, watch_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 8
    doc: dict[str, Any] = dict(await store.get("a", watch_id))
    while doc["state"] == "pending" and time.monotonic() < deadline:
        poller.sync_clock(await store.server_time_ms())
        leased = await store.schedule.claim(10, 30.0, secrets.token_hex(4))
        for claimed in leased.watches:
            poller.keeper.hold(claimed)
            await poller.handle(claimed)
        doc = dict(await store.get("a", watch_id))
        await asyncio.sleep(0.02)
    return doc


@pytest.mark.parametrize("redis_client", ["fakeredis", "redis"], indirect=True)
async def test_the_worker_polls_heygen_with_the_opened_header_to_completed(
    store: Store,
) -> None:
    key = generate_key()
    heygen = HeyGen()
    async with (
        TestServer(heygen.app, host="127.0.0.1") as server,
        aiohttp.ClientSession() as session,
    ):
        url = str(server.make_url("/v1/video_status.get").with_query(video_id="v1"))
        watch_id = await register_with_headers(
            store, worker_settings(secret_keys=key), url, {"X-Api-Key": SECRET}
        )
        poller = Poller(store, session, worker_settings(secret_keys=key))
        doc = await poll_until_ended(store, poller, watch_id)

    assert doc["state"] == "completed", doc
    assert doc["result"] == "https://cdn.example/v1.mp4" and not doc.get("result_truncated")
    assert heygen.requests and set(heygen.requests) == {SECRET}
    assert len(heygen.requests) == 2  # processing, then completed
    assert SECRET not in json.dumps(doc["spec"])


@pytest.mark.parametrize("redis_client", ["fakeredis", "redis"], indirect=True)
async def test_a_watch_without_the_header_ends_on_the_401(store: Store) -> None:
    key = generate_key()
    heygen = HeyGen()
    async with (
        TestServer(heygen.app, host="127.0.0.1") as server,
        aiohttp.ClientSession() as session,
    ):
        url = str(server.make_url("/v1/video_status.get").with_query(video_id="v1"))
        watch_id = await register_with_headers(
            store, worker_settings(secret_keys=key), url, {"X-Api-Key": "wrong"}
        )
        poller = Poller(store, session, worker_settings(secret_keys=key))
        doc = await poll_until_ended(store, poller, watch_id)

    assert doc["state"] == "error" and (doc["reason"] or "").startswith("HTTP 401")
    assert heygen.requests == ["wrong"]


@pytest.mark.parametrize("redis_client", ["fakeredis", "redis"], indirect=True)
@pytest.mark.parametrize("worker_keys", ["other", "none"])
async def test_unreadable_headers_end_the_watch_without_a_request(
    store: Store, worker_keys: str
) -> None:
    heygen = HeyGen()
    async with (
        TestServer(heygen.app, host="127.0.0.1") as server,
        aiohttp.ClientSession() as session,
    ):
        url = str(server.make_url("/v1/video_status.get").with_query(video_id="v1"))
        watch_id = await register_with_headers(
            store, worker_settings(secret_keys=generate_key()), url, {"X-Api-Key": SECRET}
        )
        keys = {"secret_keys": generate_key()} if worker_keys == "other" else {}
        poller = Poller(store, session, worker_settings(**keys))
        doc = await poll_until_ended(store, poller, watch_id)

    assert doc["state"] == "error" and doc["reason"] == UNREADABLE_DETAIL
    assert doc["last_error"] == UNREADABLE_DETAIL
    assert heygen.requests == []


@pytest.mark.parametrize("redis_client", ["fakeredis", "redis"], indirect=True)
async def test_a_rotated_key_still_opens_the_headers(store: Store) -> None:
    old, new = generate_key(), generate_key()
    heygen = HeyGen(pending_polls=0)
    async with (
        TestServer(heygen.app, host="127.0.0.1") as server,
        aiohttp.ClientSession() as session,
    ):
        url = str(server.make_url("/v1/video_status.get").with_query(video_id="v9"))
        watch_id = await register_with_headers(
            store, worker_settings(secret_keys=old), url, {"X-Api-Key": SECRET}
        )
        poller = Poller(store, session, worker_settings(secret_keys=f"{new},{old}"))
        doc = await poll_until_ended(store, poller, watch_id)

    assert doc["state"] == "completed" and doc["result"] == "https://cdn.example/v9.mp4"
    assert heygen.requests == [SECRET]


@pytest.mark.parametrize("redis_client", ["fakeredis", "redis"], indirect=True)
async def test_a_result_the_store_cannot_encode_as_is_is_saved_as_text(store: Store) -> None:
    """A lone surrogate in the result (the standard library parses it; orjson, which writes
    the watch document, refuses it): the watch still ends completed, its result the JSON text."""
    key = generate_key()
    requests: list[str | None] = []

    async def status(request: web.Request) -> web.Response:
        requests.append(request.headers.get("X-Api-Key"))
        payload = b'{"code": 100, "data": {"status": "completed", "video_url": "a\\ud800b"}}'
        return web.Response(body=payload, content_type="application/json")

    app = web.Application()
    app.router.add_get("/v1/video_status.get", status)
    async with TestServer(app, host="127.0.0.1") as server, aiohttp.ClientSession() as session:
        url = str(server.make_url("/v1/video_status.get"))
        watch_id = await register_with_headers(
            store, worker_settings(secret_keys=key), url, {"X-Api-Key": SECRET}
        )
        poller = Poller(store, session, worker_settings(secret_keys=key))
        doc = await poll_until_ended(store, poller, watch_id)

    assert doc["state"] == "completed"
    assert doc["result"] == '"a\\ud800b"' and doc["result_truncated"] is True
    assert requests == [SECRET]
