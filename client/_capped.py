"""Reading an HTTP body whose sender we do not trust: never more than a cap of it in memory.
Used for the upstream's status answers (`upstream.py`, 64 KiB) and the watch service's answers
(`service.py`)."""

from __future__ import annotations

import aiohttp


async def read_capped(response: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The body, or None when it is longer than `limit` bytes: then at most `limit` + 1 bytes
    were read, or none when the declared Content-Length already says so."""
    length = response.content_length
    if length is not None and length > limit:
        return None
    if length is not None and "Content-Encoding" not in response.headers:
        return await response.read()  # exactly the length it declared: within the cap
    body = bytearray()  # unknown length, or compressed (a small body may inflate past the cap)
    while len(body) <= limit:
        chunk = await response.content.read(limit + 1 - len(body))
        if not chunk:
            return bytes(body)
        body += chunk
    return None
