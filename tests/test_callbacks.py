"""Push callbacks (`"callback": true`, `POST`/`GET /v1/callbacks/{id}/{token}`): the URL, the
stored hash, the early poll and its rate rule, leased watches, the one 404, the body cap, auth.

Store tests run on fakeredis, a real Redis and a Redis Cluster (the `store` fixture); API tests
on fakeredis and a real Redis, each in a fresh namespace.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY
from pydantic import ValidationError

from service.api.auth import redact
from service.settings import Settings
from service.store.queue import Claimed
from service.store.watches import MAX_CALLBACK_TOKENS, Store
from tests.service_fixtures import ApiFactory, delete_namespace, fake_redis, real_redis_or_skip
from worker.cli import describe_invalid
from worker.poller import plan_first_poll
from worker.spec import SpecCache

TENANT = "acme"
STATUS_URL = "http://translate-1:5000/status"
SPEC = {"status_url": STATUS_URL, "callback": True}
LONG_LEASE = 30.0
FAR_S = 600  # a next poll far out (s)
KEYS = {"key-a-0123456789abcdef": "a"}
AS_A = {"Authorization": "Bearer key-a-0123456789abcdef"}


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def metric(outcome: str) -> float:
    return REGISTRY.get_sample_value("vtwatch_callbacks_total", {"outcome": outcome}) or 0.0


# -- the store ------------------------------------------------------------------------------


async def register(store: Store, tokens: int = 1) -> tuple[str, list[str]]:
    doc, created = await store.register(TENANT, SPEC, 3600)
    assert created
    minted = [secrets.token_urlsafe(16) for _ in range(tokens)]
    for token in minted:
        assert await store.add_callback_token(doc["id"], token_hash(token))
    return doc["id"], minted


async def claim_one(store: Store, token: str | None = None) -> Claimed:
    claim = await store.schedule.claim(10, LONG_LEASE, token or secrets.token_hex(4))
    assert len(claim.watches) == 1
    return claim.watches[0]


async def poll_and_save(store: Store, claimed: Claimed, seconds: float = FAR_S) -> int:
    """Save a poll of `claimed`, due again `seconds` from now (as its backoff would say);
    returns that due time (ms)."""
    due = await store.server_time_ms() + int(seconds * 1000)
    doc = {**claimed.doc, "attempts": claimed.doc["attempts"] + 1, "next_poll_at": due}
    assert (await store.save([(claimed, doc)])) == [True]
    return due


async def due_at(store: Store, watch_id: str) -> float | None:
    return await store.redis.zscore(store.keys.of(watch_id).schedule, watch_id)


async def polled_far(store: Store, watch_id: str) -> int:
    """The watch claimed and saved due `FAR_S` from now (not due, not leased)."""
    return await poll_and_save(store, await claim_one(store))


async def test_the_store_keeps_the_hash_of_a_token_never_the_token(store: Store) -> None:
    watch_id, (token,) = await register(store)

    stored = await store.redis.hgetall(store.keys.of(watch_id).callback(watch_id))

    assert stored == {f"h:{token_hash(token)}": "1"}
    everything = [
        str(await store.redis.dump(key))
        async for key in store.redis.scan_iter(match=f"vtw:{{{store.keys.namespace}*")
    ]
    assert not any(token in text for text in everything)
    ttl = await store.redis.pttl(store.keys.of(watch_id).callback(watch_id))
    assert 3600_000 < ttl <= (3600 + 86400) * 1000  # a day past the deadline


async def test_a_watch_takes_a_bounded_number_of_tokens(store: Store) -> None:
    watch_id, _ = await register(store, tokens=MAX_CALLBACK_TOKENS)

    assert not await store.add_callback_token(watch_id, token_hash("one too many"))
    assert not await store.add_callback_token("w_missing", token_hash("x"))


async def test_a_callback_makes_a_watch_due_now_never_later(store: Store) -> None:
    watch_id, (token,) = await register(store)
    await polled_far(store, watch_id)
    before = await store.server_time_ms()

    assert await store.callback(watch_id, token_hash(token), 1.0) == "accepted"

    due = await due_at(store, watch_id)
    after = await store.server_time_ms()
    assert due is not None and before <= due <= after
    assert (await store.get(TENANT, watch_id))["next_poll_at"] == due
    assert (await claim_one(store)).id == watch_id  # the worker finds it at once


async def test_a_callback_to_a_watch_already_due_changes_nothing(store: Store) -> None:
    watch_id, (token,) = await register(store)
    claimed = await claim_one(store)
    await poll_and_save(store, claimed, seconds=-1)  # polled once, due again already
    due = await due_at(store, watch_id)

    assert await store.callback(watch_id, token_hash(token), 1.0) == "ignored"

    assert await due_at(store, watch_id) == due
    # ... and takes no early poll of the interval: one after the watch is polled still counts.
    await polled_far(store, watch_id)
    assert await store.callback(watch_id, token_hash(token), 1.0) == "accepted"


async def test_a_callback_before_the_first_poll_is_not_lost(store: Store) -> None:
    """A fast job pushes before any worker claimed its new watch: the watch is due already,
    but its first poll would be put off to initial_wait_time at the claim; the callback marks
    it, and the first poll comes at once."""
    watch_id, (token,) = await register(store)  # a new watch is due at once, never polled

    assert await store.callback(watch_id, token_hash(token), 1.0) == "accepted"
    assert await store.callback(watch_id, token_hash(token), 1.0) == "ignored"  # one per interval

    doc = (await claim_one(store)).doc
    assert doc["pushed"] is True
    spec = SpecCache(min_poll_interval=1.0).parse(
        json.dumps(
            {"status_url": "http://u/s", "callback": True, "policy": {"initial_wait_time": 60}}
        )
    )
    assert plan_first_poll(doc, spec, None, doc["created_at"], random.Random(0)) is None


async def test_a_burst_of_callbacks_makes_one_early_poll_per_interval(store: Store) -> None:
    watch_id, (token,) = await register(store)
    await polled_far(store, watch_id)
    interval = 30.0

    outcomes: list[str] = []
    for _ in range(10):  # 1000 callbacks, 100 at once
        outcomes += await asyncio.gather(
            *(store.callback(watch_id, token_hash(token), interval) for _ in range(100))
        )

    assert outcomes.count("accepted") == 1
    assert outcomes.count("ignored") == 999
    # The worker polls it; callbacks within the interval change nothing more.
    far = await poll_and_save(store, await claim_one(store))
    for _ in range(20):
        assert await store.callback(watch_id, token_hash(token), interval) == "ignored"
    assert await due_at(store, watch_id) == far
    # The next interval (the last early poll made to lie one interval back): one again.
    last = int(await store.redis.hget(store.keys.of(watch_id).callback(watch_id), "early"))
    back = last - int(interval * 1000)
    await store.redis.hset(store.keys.of(watch_id).callback(watch_id), "early", back)
    assert await store.callback(watch_id, token_hash(token), interval) == "accepted"
    assert (await due_at(store, watch_id) or 0) < far


async def test_a_leased_watch_gets_its_early_poll_after_the_poll_in_flight_and_only_one(
    store: Store,
) -> None:
    watch_id, (token,) = await register(store)
    in_flight = await claim_one(store)
    lease_expiry = await due_at(store, watch_id)
    interval = 2.0

    called_at = await store.server_time_ms()
    assert await store.callback(watch_id, token_hash(token), interval) == "accepted"
    assert await store.callback(watch_id, token_hash(token), 0.0) == "ignored"  # owed already

    # No second, concurrent poll: the lease and its expiry are untouched, nothing is claimable.
    assert await due_at(store, watch_id) == lease_expiry
    assert (await store.schedule.claim(10, LONG_LEASE, "other")).watches == []
    # The poll in flight is saved with its backoff far out: due one interval after the callback.
    await poll_and_save(store, in_flight)
    due = await due_at(store, watch_id)
    assert due is not None and called_at + interval * 1000 <= due <= called_at + 3000
    # That early poll's own save keeps its backoff: only one early poll per callback.
    await store.redis.zadd(store.keys.of(watch_id).schedule, {watch_id: 0})  # due now
    far = await poll_and_save(store, await claim_one(store))
    assert await due_at(store, watch_id) == far
    assert await store.redis.zcard(store.keys.of(watch_id).callbacks) == 0


async def test_an_owed_early_poll_never_schedules_later_than_the_backoff(store: Store) -> None:
    watch_id, (token,) = await register(store)
    in_flight = await claim_one(store)
    assert await store.callback(watch_id, token_hash(token), 5.0) == "accepted"

    soon = await poll_and_save(store, in_flight, seconds=1.0)  # the backoff says sooner

    assert await due_at(store, watch_id) == soon


async def test_an_owed_early_poll_is_not_given_to_another_claims_poll(store: Store) -> None:
    """The lease was given back (a deferral, a stop): the next claim's poll comes after the
    callback, so it is the confirmation; its save keeps its backoff."""
    watch_id, (token,) = await register(store)
    first = await claim_one(store, "first")
    assert await store.callback(watch_id, token_hash(token), 0.05) == "accepted"
    await store.schedule.release([first])

    far = await poll_and_save(store, await claim_one(store, "second"))

    assert await due_at(store, watch_id) == far


async def test_an_ended_watch_is_left_alone(store: Store) -> None:
    watch_id, (token,) = await register(store)
    claimed = await claim_one(store)
    assert await store.callback(watch_id, token_hash(token), 0.05) == "accepted"  # owed
    done = {
        **claimed.doc,
        "state": "completed",
        "last_result": "completed",
        "next_poll_at": None,
        "finished_at": claimed.doc["created_at"],
    }
    assert (await store.save([(claimed, done)])) == [True]
    raw = await store.redis.get(store.keys.watch(watch_id))
    await asyncio.sleep(0.06)

    assert await store.callback(watch_id, token_hash(token), 0.05) == "missing"

    assert await due_at(store, watch_id) is None  # never back on the schedule
    assert await store.redis.get(store.keys.watch(watch_id)) == raw
    assert not await store.add_callback_token(watch_id, token_hash("new"))


async def test_a_cancelled_watch_and_a_wrong_token_are_missing(store: Store) -> None:
    watch_id, (token,) = await register(store)
    assert await store.callback(watch_id, token_hash("wrong"), 1.0) == "missing"
    assert await store.callback("w_000000000000unknown000000", token_hash(token), 1.0) == "missing"
    await store.cancel(TENANT, watch_id)
    assert await store.callback(watch_id, token_hash(token), 1.0) == "missing"


# -- the API --------------------------------------------------------------------------------


@dataclass
class Env:
    client: httpx.AsyncClient
    store: Store
    settings: Settings

    async def register(self, body: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
        response = await self.client.post(
            "/v1/watches", json=body or {"status_url": STATUS_URL, "callback": True}, **kwargs
        )
        assert response.status_code == 201, response.text
        watch: dict[str, Any] = response.json()
        return watch

    async def polled_far(self, watch_id: str) -> int:
        """Claim the watch and save its poll due `FAR_S` from now (as a worker would)."""
        claim = await self.store.schedule.claim(10, LONG_LEASE, secrets.token_hex(4))
        [claimed] = [c for c in claim.watches if c.id == watch_id]
        return await poll_and_save(self.store, claimed)


EnvFactory = Callable[..., Awaitable[Env]]


@pytest.fixture(params=["fakeredis", "redis"])
async def make_env(
    request: pytest.FixtureRequest, make_api: ApiFactory
) -> AsyncIterator[EnvFactory]:
    made: list[tuple[aioredis.Redis, str]] = []

    async def start(headers: dict[str, str] | None = None, **settings: Any) -> Env:
        if request.param == "fakeredis":
            client = fake_redis()
        else:
            client = await real_redis_or_skip(decode_responses=True)
        namespace = "t" + secrets.token_hex(6)
        made.append((client, namespace))
        config = Settings(namespace=namespace, **settings)
        api = await make_api(config, redis=client, headers=headers)
        return Env(api, Store(client, namespace=namespace), config)

    yield start
    for client, namespace in made:
        await delete_namespace(client, namespace)


async def test_registration_answers_a_callback_url_on_the_request_base(
    make_env: EnvFactory,
) -> None:
    env = await make_env()

    watch = await env.register()

    url = urlsplit(watch["callback_url"])
    prefix = f"/v1/callbacks/{watch['id']}/"
    assert (url.scheme, url.netloc) == ("http", "test")
    assert url.path.startswith(prefix)
    token = url.path.removeprefix(prefix)
    assert len(token) == 22  # 128 random bits, URL-safe base64
    plain = await env.register({"status_url": STATUS_URL})
    assert "callback_url" not in plain
    assert "callback" not in (await env.client.get(f"/v1/watches/{watch['id']}")).json()


async def test_the_public_url_is_the_callback_urls_base(make_env: EnvFactory) -> None:
    env = await make_env(public_url="https://hooks.example.com/vtw/")

    watch = await env.register()

    base = f"https://hooks.example.com/vtw/v1/callbacks/{watch['id']}/"
    assert watch["callback_url"].startswith(base)


@pytest.mark.parametrize(
    "url",
    ["ftp://example.com", "example.com", "https://", "https://a.example/?x=1", "https://a.b/#f"],
)
def test_a_public_url_of_the_wrong_shape_is_one_configuration_line(url: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(public_url=url)
    line = describe_invalid(caught.value)
    assert line.startswith("VTW_PUBLIC_URL: ")
    assert "e.g. VTW_PUBLIC_URL=https://" in line
    assert "\n" not in line


def test_a_public_url_loses_its_trailing_slash() -> None:
    assert Settings(public_url="http://10.0.0.5:8000/").public_url == "http://10.0.0.5:8000"


async def test_a_replay_answers_a_fresh_url_and_every_url_works(make_env: EnvFactory) -> None:
    env = await make_env()
    headers = {"Idempotency-Key": "job-1"}
    first = await env.register(headers=headers)

    replay = await env.client.post(
        "/v1/watches", json={"status_url": STATUS_URL, "callback": True}, headers=headers
    )

    assert replay.status_code == 200
    again = replay.json()
    assert again["id"] == first["id"]
    assert again["callback_url"] and again["callback_url"] != first["callback_url"]
    await env.polled_far(first["id"])
    assert (await env.client.post(first["callback_url"])).status_code == 202
    assert (await env.client.get(again["callback_url"])).status_code == 202


async def test_post_and_get_answer_202_and_make_the_watch_due_now(make_env: EnvFactory) -> None:
    env = await make_env(min_poll_interval=0.05)
    watch = await env.register()
    for method in ("POST", "GET"):
        await env.polled_far(watch["id"])
        accepted = metric("accepted")
        await asyncio.sleep(0.06)

        response = await env.client.request(method, watch["callback_url"], content=b'{"x": 1}')

        assert response.status_code == 202, response.text
        assert response.json() == {"status": "accepted"}
        now = await env.store.server_time_ms()
        due = await due_at(env.store, watch["id"])
        assert due is not None and now - 1000 <= due <= now
        shown = (await env.client.get(f"/v1/watches/{watch['id']}")).json()["next_poll_at"]
        assert shown is not None
        assert metric("accepted") == accepted + 1


async def test_a_burst_of_1000_callbacks_moves_the_due_time_once(make_env: EnvFactory) -> None:
    env = await make_env(min_poll_interval=30)
    watch = await env.register()
    await env.polled_far(watch["id"])
    accepted, ignored = metric("accepted"), metric("ignored")

    responses: list[httpx.Response] = []
    for _ in range(10):
        batch = [env.client.post(watch["callback_url"]) for _ in range(100)]
        responses += await asyncio.gather(*batch)
        if len(responses) == 100:  # the worker polls it meanwhile: due far out again
            far = await env.polled_far(watch["id"])

    assert {r.status_code for r in responses} == {202}
    assert metric("accepted") == accepted + 1
    assert metric("ignored") == ignored + 999
    assert await due_at(env.store, watch["id"]) == far


async def test_unknown_wrong_ended_and_malformed_answer_the_same_404(make_env: EnvFactory) -> None:
    env = await make_env()
    watch = await env.register()
    ended = await env.register()
    plain = await env.register({"status_url": STATUS_URL})
    assert (await env.client.delete(f"/v1/watches/{ended['id']}")).status_code == 200
    token = watch["callback_url"].rsplit("/", 1)[1]
    ended_url = urlsplit(ended["callback_url"]).path
    rejected = metric("rejected")
    paths = [
        f"/v1/callbacks/{watch['id']}/{secrets.token_urlsafe(16)}",  # wrong token
        f"/v1/callbacks/w_000000000000unknown000000/{token}",  # unknown watch
        ended_url,  # ended watch
        f"/v1/callbacks/{plain['id']}/{token}",  # a watch without callbacks
        f"/v1/callbacks/{watch['id']}/{token}~",  # not a token's shape (open mode reaches it)
        f"/v1/callbacks/{watch['id']}/{'a' * 65}",
    ]

    responses = [await env.client.post(path) for path in paths]
    responses.append(await env.client.get(ended_url))

    def shape(response: httpx.Response) -> tuple[int, bytes, tuple[tuple[str, str], ...]]:
        headers = sorted((k, v) for k, v in response.headers.items() if k != "x-request-id")
        return response.status_code, response.content, tuple(headers)

    assert {shape(r) for r in responses} == {shape(responses[0])}
    assert responses[0].status_code == 404
    assert responses[0].json() == {"detail": "no such callback"}
    assert metric("rejected") == rejected + len(responses)


async def test_a_callback_body_over_64_kib_is_413_and_any_other_body_is_fine(
    make_env: EnvFactory,
) -> None:
    env = await make_env()
    watch = await env.register()
    url = watch["callback_url"]

    too_big = await env.client.post(url, content=b"x" * (64 * 1024 + 1))

    assert too_big.status_code == 413

    async def chunks() -> AsyncIterator[bytes]:
        yield b"x" * 40_000
        yield b"y" * 40_000

    streamed = await env.client.post(url, content=chunks())
    assert streamed.status_code == 413
    json_junk = {"content-type": "application/json"}
    for body in (b"{not json", b'{"a": NaN}', "\ud800".encode("utf-8", "surrogatepass")):
        answer = await env.client.post(url, content=body, headers=json_junk)
        assert answer.status_code == 202, answer.text


async def test_callbacks_need_no_key_and_open_no_other_route(make_env: EnvFactory) -> None:
    env = await make_env(api_keys=KEYS)
    watch = await env.register(headers=AS_A)
    url = urlsplit(watch["callback_url"]).path

    assert (await env.client.post(url)).status_code == 202
    assert (await env.client.get(url)).status_code == 202
    wrong = f"/v1/callbacks/{watch['id']}/{secrets.token_urlsafe(16)}"
    assert (await env.client.post(wrong)).status_code == 404
    for path in [
        "/v1/callbacks",
        "/v1/callbacks/",
        f"/v1/callbacks/{watch['id']}",
        f"{url}/",
        f"{url}/extra",
        f"{url}/../../../watches",
        f"/v1/callbacks/{watch['id']}/..%2F..%2Fwatches",
        f"/v1/callbacks/{watch['id']}/a.b",
        "/v1/watches",
        f"/v1/watches/{watch['id']}",
        "/v1/status",
        "/metrics",
    ]:
        for method in ("GET", "POST"):
            answer = await env.client.request(
                method, httpx.URL(env.client.base_url, raw_path=path.encode())
            )
            assert answer.status_code == 401, (method, path, answer.status_code)
    assert (await env.client.get("/v1/watches", headers=AS_A)).status_code == 200


def test_the_access_line_of_a_callback_never_shows_its_token(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import service.api.routes.callbacks  # noqa: F401 - installs the filter

    token = secrets.token_urlsafe(16)
    path = f"/v1/callbacks/w_0123/{token}"
    with caplog.at_level("INFO", logger="uvicorn.access"):
        # uvicorn's access line: client, method, path with query, HTTP version, status
        logging.getLogger("uvicorn.access").info(
            '%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "POST", path, "1.1", 202
        )

    assert token not in caplog.text
    assert '"POST /v1/callbacks/w_0123/*** HTTP/1.1" 202' in caplog.text
    assert redact(f"GET {path}?x=1 and {path}/") == (
        "GET /v1/callbacks/w_0123/***?x=1 and /v1/callbacks/w_0123/***/"
    )


# -- the worker: a watch with callbacks waits for its push ----------------------------------


def test_a_watch_with_callbacks_makes_its_first_poll_after_initial_wait_time() -> None:
    """Register first, create the job after: the first poll must not find it missing (a 404
    ends a watch). A callback watch's first poll is its safety net's, at `initial_wait_time`,
    and it follows no learned schedule (the push tells when the job ends)."""
    specs = SpecCache(min_poll_interval=1.0)
    policy = {"initial_wait_time": 60.0, "max_interval": 300.0}
    pushed = specs.parse(
        json.dumps({"status_url": "http://u/jobs/1/status", "callback": True, "policy": policy})
    )
    polled = specs.parse(json.dumps({"status_url": "http://u/jobs/1/status", "policy": policy}))
    assert pushed.callback and not pushed.adaptive and polled.adaptive
    doc: Any = {"attempts": 0, "created_at": 1_000, "next_poll_at": 1_000, "deadline": 901_000}
    planned = plan_first_poll(doc, pushed, None, 1_000, random.Random(0))
    assert planned is not None and planned["next_poll_at"] == 61_000
    assert plan_first_poll(doc, polled, None, 1_000, random.Random(0)) is None  # at once
    called_back = {**doc, "next_poll_at": 5_000}  # a push made it due: poll now
    assert plan_first_poll(called_back, pushed, None, 5_000, random.Random(0)) is None
