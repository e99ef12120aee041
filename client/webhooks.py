"""Standard Webhooks v1 signatures: signing (used by the service) and verification (for receivers).

    signed content  = f"{webhook-id}.{webhook-timestamp}.{body}"
    webhook-signature = "v1," + base64(HMAC-SHA256(secret, signed content)), space-separated,
                        one per live secret; secrets are "whsec_" + base64 of random bytes.

Receivers may equally use PyPI's `standardwebhooks` package; both accept what the other makes.
`verify` takes whatever a sender put in the headers: anything that does not check out, however
malformed (a timestamp of 400 digits, a header of bytes no encoding holds), raises
`WebhookVerificationError` and nothing else.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Iterable, Mapping

from .errors import ClientError

SECRET_PREFIX = "whsec_"
TOLERANCE_SECONDS = 300
TIMESTAMP = re.compile(r"[0-9]{1,12}")  # unix seconds; ASCII digits (int() takes more)


class WebhookVerificationError(ClientError):
    """The webhook's headers or signature do not check out."""


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """One `v1,<base64>` signature of the message with one secret."""
    content = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_header(secrets_: Iterable[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value: one signature per live secret."""
    return " ".join(sign(secret, msg_id, timestamp, body) for secret in secrets_)


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance: float = TOLERANCE_SECONDS,
    now: float | None = None,
) -> None:
    """Raise WebhookVerificationError unless a signature matches and the timestamp is fresh."""
    lowered = {str(name).lower(): value for name, value in headers.items()}
    msg_id, timestamp, signatures = (
        lowered.get(f"webhook-{name}") for name in ("id", "timestamp", "signature")
    )
    if not (isinstance(msg_id, str) and _encodable(msg_id)):
        raise WebhookVerificationError("missing or malformed webhook-id")
    if not (isinstance(timestamp, str) and TIMESTAMP.fullmatch(timestamp)):
        raise WebhookVerificationError("missing or malformed webhook-timestamp")
    if not isinstance(signatures, str):
        raise WebhookVerificationError("missing or malformed webhook-signature")
    if abs((time.time() if now is None else now) - int(timestamp)) > tolerance:
        raise WebhookVerificationError("webhook timestamp too old or too new")
    expected = sign(secret, msg_id, int(timestamp), body)
    candidates = (c for c in signatures.split() if c.isascii())  # compare_digest takes no other
    if not any(hmac.compare_digest(expected, candidate) for candidate in candidates):
        raise WebhookVerificationError("no matching signature")


def _encodable(text: str) -> bool:
    """Whether UTF-8 holds `text` (an undecodable header's bytes come as lone surrogates)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True
