"""A tiny webhook receiver for the compose demo and the container smoke test.

Checks each delivery with `client.webhooks.verify` and logs `webhook <webhook-id> <type> verified
watch=<watch id>`; answers 204, or 400 when the signature does not check out. Repeats of a
`webhook-id` (at-least-once delivery) are acknowledged and logged as duplicates.

Environment: RECEIVER_HOST / RECEIVER_PORT (0.0.0.0:9000); the signing secret in WEBHOOK_SECRET,
or, when that is empty, fetched from the API: WEBHOOK_SECRET_URL (`.../v1/webhook-secret`) with
the key in WEBHOOK_SECRET_API_KEY, at the first delivery and again after a failed check (rotation).

Uses only what the vtwatch image has: `python /receiver/receiver.py` with this file mounted.
"""

from __future__ import annotations

import json
import logging
import os

from aiohttp import ClientSession, ClientTimeout, web

from client.webhooks import WebhookVerificationError, verify

logger = logging.getLogger("receiver")
SECRETS = web.AppKey("secrets", list[str])
SEEN = web.AppKey("seen", set[str])


async def fetch_secrets() -> list[str]:
    """The tenant's live secrets from the API, or [] when no URL is configured."""
    url = os.environ.get("WEBHOOK_SECRET_URL", "")
    if not url:
        return []
    headers = {"Authorization": f"Bearer {os.environ.get('WEBHOOK_SECRET_API_KEY', '')}"}
    async with (
        ClientSession(timeout=ClientTimeout(total=5)) as session,
        session.get(url, headers=headers) as response,
    ):
        response.raise_for_status()
        body = await response.json()
    return [s for s in (body["secret"], body.get("previous")) if s]


def verified_with(secrets: list[str], headers: dict[str, str], body: bytes) -> bool:
    for secret in secrets:
        try:
            verify(secret, headers, body)
        except WebhookVerificationError:
            continue
        return True
    return False


async def receive(request: web.Request) -> web.Response:
    body = await request.read()
    headers = dict(request.headers)
    secrets = request.app[SECRETS]
    if not verified_with(secrets, headers, body) and os.environ.get("WEBHOOK_SECRET_URL"):
        # No secret yet, or the tenant rotated it: ask the API once, then check again.
        try:
            secrets[:] = await fetch_secrets()
        except Exception as exc:
            logger.warning("cannot fetch the signing secret: %s", exc)
    if not verified_with(secrets, headers, body):
        # %r: a hostile id (undecodable bytes arrive as lone surrogates) stays printable
        logger.warning("webhook %r rejected: bad signature", request.headers.get("webhook-id"))
        return web.json_response({"detail": "signature does not verify"}, status=400)
    event = json.loads(body)
    msg_id = request.headers["webhook-id"]
    watch_id = event.get("data", {}).get("id")
    if msg_id in request.app[SEEN]:
        logger.info("webhook %s %s duplicate watch=%s", msg_id, event.get("type"), watch_id)
    else:
        request.app[SEEN].add(msg_id)
        logger.info("webhook %s %s verified watch=%s", msg_id, event.get("type"), watch_id)
    return web.Response(status=204)


def create_app() -> web.Application:
    app = web.Application()
    secret = os.environ.get("WEBHOOK_SECRET", "")
    app[SECRETS] = [secret] if secret else []
    app[SEEN] = set()
    app.router.add_post("/{path:.*}", receive)
    return app


def main() -> None:
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host = os.environ.get("RECEIVER_HOST", "0.0.0.0")
    port = int(os.environ.get("RECEIVER_PORT", "9000"))
    logger.info("receiving webhooks on http://%s:%d/", host, port)
    web.run_app(create_app(), host=host, port=port, print=None, access_log=None)


if __name__ == "__main__":
    main()
