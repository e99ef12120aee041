"""A watch's event stream under hostile input (review fix): a `Last-Event-ID` of non-ASCII
digits is a malformed id (the stream starts afresh), not a 500."""

from __future__ import annotations

import httpx
import pytest

from service.events import parse_event_id

from .test_events import SPEC, parse


@pytest.mark.parametrize("value", ["²-1", "¹-0", "1²-1", "١٢-0", "1-¹", "12-1\u00a0x"])
def test_ids_of_non_ascii_digits_are_malformed(value: str) -> None:
    assert parse_event_id(value) is None


@pytest.mark.parametrize("value", ["²-1", "¹-0", "١٢-1"])
async def test_a_non_ascii_last_event_id_starts_the_stream_afresh(
    api: httpx.AsyncClient, value: str
) -> None:
    created = (await api.post("/v1/watches", json={"status_url": SPEC["status_url"]})).json()
    await api.delete(f"/v1/watches/{created['id']}")
    url = f"/v1/watches/{created['id']}/events"

    fresh = await api.get(url)
    by_header = await api.get(url, headers={"Last-Event-ID": value.encode("utf-8")})
    by_latin1_header = await api.get(url, headers={"Last-Event-ID": _latin1(value)})
    by_query = await api.get(url, params={"last_event_id": value})

    for answer in (by_header, by_latin1_header, by_query):
        assert answer.status_code == 200, answer.text
        assert parse(answer.text) == parse(fresh.text)
        assert [e["data"]["state"] for e in parse(answer.text)] == ["cancelled"]


def _latin1(value: str) -> bytes:
    """`value` as a client sending Latin-1 header bytes would (UTF-8 where Latin-1 cannot)."""
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8")
