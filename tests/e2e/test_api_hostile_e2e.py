"""A real `vtwatch api` against oversized and unauthenticated uploads (issue 8, item 10).

The client is a raw socket that streams its body from a generator while it listens for the
answer, so each test can tell *when* the answer came: before the upload finished (the server
did not wait for the body), and followed by the server closing the connection (it stopped
reading). A server that read the whole body first could not answer before the upload ended:
the upload blocks as soon as the kernel buffers between the two are full.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
import pytest

from .procs import SHARED_REDIS_URL, Processes, service_env

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

MB = 1024 * 1024
CHUNK = 64 * 1024
KEY = "tenant-a-key-0123456789"
ANSWER_TIMEOUT = 5.0  # seconds; the answer comes in milliseconds, the upload would take longer


def pieces(total: int) -> Iterator[bytes]:
    """`total` bytes of body, one 64 KiB piece at a time (nothing holds all of it)."""
    piece = b" " * CHUNK
    for start in range(0, total, CHUNK):
        yield piece[: min(CHUNK, total - start)]


@dataclass
class Exchange:
    status: int
    headers: dict[str, str]
    body: bytes
    answered_after: float  # seconds from the first byte sent to the answer's head
    sent_when_answered: int  # body bytes written (to the kernel) when the answer came
    sent_in_all: int  # body bytes written before the upload stopped
    server_closed: bool  # the server ended the connection after its answer


async def upload(url: str, total: int, *, declared: bool, headers: dict[str, str]) -> Exchange:
    """POST /v1/watches with a `total`-byte body, declared (Content-Length) or chunked, while
    reading the answer; stop uploading once it came and see whether the server hangs up.

    Plain non-blocking socket calls, not asyncio streams: a stream reader drops what it holds
    when the writer's side fails (EPIPE), and a server that refuses a body makes it fail."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    loop = asyncio.get_running_loop()
    sock = socket.create_connection((parts.hostname, parts.port))
    sock.setblocking(False)
    framing = f"Content-Length: {total}" if declared else "Transfer-Encoding: chunked"
    head = [
        "POST /v1/watches HTTP/1.1",
        f"Host: {parts.netloc}",
        "Content-Type: application/json",
        framing,
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    sent = 0

    async def send_body() -> None:
        nonlocal sent
        with contextlib.suppress(ConnectionError):  # the server hung up: the upload ends
            for piece in pieces(total):
                await loop.sock_sendall(
                    sock, piece if declared else b"%x\r\n%s\r\n" % (len(piece), piece)
                )
                sent += len(piece)
            if not declared:
                await loop.sock_sendall(sock, b"0\r\n\r\n")

    async def receive() -> bytes:
        try:
            return await asyncio.wait_for(loop.sock_recv(sock, 65536), ANSWER_TIMEOUT)
        except ConnectionResetError:
            return b""

    started = time.monotonic()
    await loop.sock_sendall(sock, ("\r\n".join(head) + "\r\n\r\n").encode())
    sending = asyncio.create_task(send_body())
    try:
        answer = bytearray()
        while b"\r\n\r\n" not in answer:
            data = await receive()
            assert data, f"the connection ended without an answer (got {bytes(answer)!r})"
            answer += data
        answered_after, sent_when_answered = time.monotonic() - started, sent
        raw_head, _, body = bytes(answer).partition(b"\r\n\r\n")
        status_line, *lines = raw_head.decode("latin-1").split("\r\n")
        answer_headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines)
        }
        length = int(answer_headers["content-length"])
        while len(body) < length:
            data = await receive()
            assert data, "the connection ended in the middle of the answer"
            body += data
        server_closed = await receive() == b""
    finally:
        sending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sending
        sock.close()
    return Exchange(
        status=int(status_line.split()[1]),
        headers=answer_headers,
        body=body,
        answered_after=answered_after,
        sent_when_answered=sent_when_answered,
        sent_in_all=sent,
        server_closed=server_closed,
    )


def assert_refused_early(exchange: Exchange, total: int) -> None:
    assert exchange.answered_after < ANSWER_TIMEOUT
    assert exchange.sent_when_answered < total, "the answer waited for the whole upload"
    assert exchange.server_closed, "the server kept the connection (and would read the rest)"
    assert exchange.sent_in_all < total
    assert len(exchange.body) < 200
    assert json.loads(exchange.body)["detail"]


async def assert_still_serving(http: httpx.AsyncClient, url: str, **headers: str) -> None:
    assert (await http.get(f"{url}/healthz")).status_code == 200
    listed = await http.get(f"{url}/v1/watches", headers=headers)
    assert listed.status_code == 200, listed.text
    assert listed.json()["items"] == []


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
async def test_a_100_mb_post_is_413_before_the_upload_ends(
    procs: Processes, namespace: str, http: httpx.AsyncClient, declared: bool
) -> None:
    _, url = await procs.start_api(service_env(SHARED_REDIS_URL, namespace))
    total = 100 * MB

    exchange = await upload(url, total, declared=declared, headers={})

    assert exchange.status == 413, exchange.body
    assert_refused_early(exchange, total)
    await assert_still_serving(http, url)


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
async def test_without_a_key_a_50_mb_post_is_401_before_the_upload_ends(
    procs: Processes, namespace: str, http: httpx.AsyncClient, declared: bool
) -> None:
    env = service_env(SHARED_REDIS_URL, namespace, api_keys=f"a:{KEY}")
    _, url = await procs.start_api(env)
    total = 50 * MB

    exchange = await upload(url, total, declared=declared, headers={})

    assert exchange.status == 401, exchange.body
    assert exchange.headers["www-authenticate"] == "Bearer"
    assert_refused_early(exchange, total)
    await assert_still_serving(http, url, Authorization=f"Bearer {KEY}")
