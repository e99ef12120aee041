"""Webhook verification against hostile senders (review fix): `client.webhooks.verify` answers
whatever a sender puts in the headers with `WebhookVerificationError` and nothing else, and the
demo receiver (`deploy/receiver.py`), served on loopback, answers such a request 400, not 500."""

from __future__ import annotations

import asyncio
import importlib.util
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from client import webhooks
from client.webhooks import WebhookVerificationError, sign, verify

from .fakes import served

SECRET = webhooks.new_secret()
BODY = b'{"type":"watch.completed","data":{"id":"w_1"}}'
RECEIVER = Path(__file__).resolve().parent.parent / "deploy" / "receiver.py"


def signed(msg_id: str = "msg_1", timestamp: int | None = None) -> dict[str, str]:
    at = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(at),
        "webhook-signature": sign(SECRET, msg_id, at, BODY),
    }


HOSTILE: dict[str, dict[str, Any]] = {
    "non-ASCII signature": {"webhook-signature": "v1,é"},
    "non-ASCII among the signatures": {"webhook-signature": "v1,é v1,AAAA"},
    "a lone surrogate as signature": {"webhook-signature": "v1,\udcff"},
    "an undecodable webhook-id": {"webhook-id": "caf\udce9"},
    "a lone high surrogate in webhook-id": {"webhook-id": "msg_\ud800"},
    "a 400-digit timestamp": {"webhook-timestamp": "9" * 400},
    "a 5000-digit timestamp": {"webhook-timestamp": "9" * 5000},
    "a negative timestamp": {"webhook-timestamp": "-1"},
    "a timestamp in other digits": {"webhook-timestamp": "١٧٠٠٠٠٠٠٠٠"},
    "a timestamp with a fraction": {"webhook-timestamp": "1700000000.5"},
    "bytes for a header": {"webhook-signature": b"v1,AAAA"},
    "None for a header": {"webhook-id": None},
}


@pytest.mark.parametrize("change", HOSTILE.values(), ids=HOSTILE.keys())
def test_malformed_headers_raise_a_verification_error_and_nothing_else(
    change: dict[str, Any],
) -> None:
    headers: dict[Any, Any] = {**signed(), **change}

    with pytest.raises(WebhookVerificationError):
        verify(SECRET, headers, BODY)


def test_a_header_name_that_is_not_text_is_no_header() -> None:
    headers: dict[Any, Any] = {**signed(), 7: "x"}
    del headers["webhook-id"]

    with pytest.raises(WebhookVerificationError):
        verify(SECRET, headers, BODY)


def test_a_good_signature_still_verifies_beside_a_non_ascii_one() -> None:
    headers = signed()
    headers["webhook-signature"] = "v1,é " + headers["webhook-signature"]

    verify(SECRET, headers, BODY)  # no exception: one signature matches


# -- the demo receiver ---------------------------------------------------------------------


def load_receiver() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vtw_demo_receiver", RECEIVER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def post_raw(base_url: str, headers: list[tuple[bytes, bytes]], body: bytes) -> int:
    """POST with header bytes as given (no client library re-encodes them); the status code."""
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        head = [b"POST /hooks HTTP/1.1", b"Host: " + host.encode(), b"Connection: close"]
        head += [b"Content-Length: " + str(len(body)).encode()]
        head += [name + b": " + value for name, value in headers]
        writer.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 5)
        return int(status_line.split()[1])
    finally:
        writer.close()
        await writer.wait_closed()


def raw_headers(**change: bytes) -> list[tuple[bytes, bytes]]:
    headers = {name: value.encode() for name, value in signed().items()}
    headers.update({name.replace("_", "-"): value for name, value in change.items()})
    return [(name.encode(), value) for name, value in headers.items()]


@pytest.mark.parametrize(
    "change",
    [
        {"webhook_signature": "v1,é".encode()},
        {"webhook_id": b"caf\xe9"},  # not UTF-8: reaches the handler as a lone surrogate
        {"webhook_id": b"\xff\xfe"},
        {"webhook_timestamp": b"9" * 400},
    ],
    ids=["non-ASCII signature", "Latin-1 webhook-id", "undecodable webhook-id", "huge timestamp"],
)
async def test_the_demo_receiver_answers_a_hostile_webhook_400(
    monkeypatch: pytest.MonkeyPatch, change: dict[str, bytes]
) -> None:
    monkeypatch.setenv("WEBHOOK_SECRET", SECRET)
    monkeypatch.delenv("WEBHOOK_SECRET_URL", raising=False)
    receiver = load_receiver()

    async with served(receiver.create_app()) as url:
        hostile = await post_raw(url, raw_headers(**change), BODY)
        genuine = await post_raw(url, raw_headers(), BODY)

    assert hostile == 400
    assert genuine == 204  # and it still takes a good one
