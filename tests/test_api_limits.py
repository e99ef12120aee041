"""The API's answers to limits and passing store states (issue 8, items 4 and 12)."""

from __future__ import annotations

import asyncio

import pytest
from redis.exceptions import BusyLoadingError, OutOfMemoryError, ReadOnlyError, ResponseError

from service.settings import Settings
from service.store.watches import Store
from tests.service_fixtures import REAL_REDIS_URL, ApiFactory, real_redis_or_skip

BODY = {"status_url": "http://translate-1:5000/status"}


async def test_a_tenant_over_its_pending_watches_gets_429(make_api: ApiFactory) -> None:
    as_a = {"Authorization": "Bearer key-a-0123456789abcd"}
    as_b = {"Authorization": "Bearer key-b-0123456789abcd"}
    limited = await make_api(
        Settings(api_keys="a:key-a-0123456789abcd,b:key-b-0123456789abcd", max_active_watches=2)
    )
    first = await limited.post("/v1/watches", json=BODY, headers=as_a)
    await limited.post("/v1/watches", json=BODY, headers=as_a)

    refused = await limited.post("/v1/watches", json=BODY, headers=as_a)

    assert refused.status_code == 429
    assert "VTW_MAX_ACTIVE_WATCHES" in refused.json()["detail"]
    assert (await limited.post("/v1/watches", json=BODY, headers=as_b)).status_code == 201
    await limited.delete(f"/v1/watches/{first.json()['id']}", headers=as_a)
    assert (await limited.post("/v1/watches", json=BODY, headers=as_a)).status_code == 201
    summary = (await limited.get("/v1/status", headers=as_a)).json()
    assert summary["by_state"]["pending"] == 2 and summary["by_state"]["cancelled"] == 1


@pytest.mark.parametrize(
    "error",
    [
        ReadOnlyError("READONLY You can't write against a read only replica."),
        OutOfMemoryError("OOM command not allowed when used memory > 'maxmemory'."),
        ResponseError("BUSY Redis is busy running a script."),
        BusyLoadingError("LOADING Redis is loading the dataset in memory"),
    ],
)
async def test_any_passing_redis_error_is_503_never_500(
    make_api: ApiFactory, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    api = await make_api()

    async def failing(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(Store, "register", failing)
    response = await api.post("/v1/watches", json=BODY)

    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert "storage unavailable" in response.json()["detail"]


def test_redis_commands_are_never_resent_by_the_client_library() -> None:
    """redis-py's Retry re-sends a timed-out command by default, which may have run: a second
    claim, rotation or cancel (item 3 of #8). Ours retries only what is safe, itself."""
    from service.store.connection import connect

    client = connect(Settings(redis_url="redis://127.0.0.1:1/0"))
    connection = client.connection_pool.make_connection()

    assert connection.retry.get_retries() == 0


async def test_closing_a_client_closes_its_connections() -> None:
    """The API, the worker and `vtwatch dev` close their client on shutdown: that must close
    the pool's connections too (a client given a pool by hand leaves them open)."""
    from service.store.connection import connect

    probe = await real_redis_or_skip(decode_responses=True)
    client = connect(Settings(redis_url=REAL_REDIS_URL))
    name = f"vtw-close-test-{id(client)}"
    await client.client_setname(name)

    await client.aclose()

    for _ in range(50):
        names = [entry.get("name") for entry in await probe.client_list()]
        if name not in names:
            break
        await asyncio.sleep(0.02)
    await probe.aclose()
    assert name not in names
