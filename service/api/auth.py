"""API keys: `Authorization: Bearer <key>`; a key belongs to one tenant.

`tenant_of` is the one rule from a header to a tenant. `middleware.Authenticate` applies it to
every `/v1/` request (but a push callback's, `is_callback`) and to `/metrics` before anything
reads the body; the `TenantDep`
dependency hands its answer to the routes. `check_open_mode` and `check_key_length` are the
start-up refusals.
"""

from __future__ import annotations

import hmac
import ipaddress
import re

from fastapi import HTTPException, status

from ..settings import Settings

OPEN_TENANT = "default"
MIN_KEY_LENGTH = 16  # characters, when listening beyond loopback
UNAUTHORIZED = "missing or unknown API key: send `Authorization: Bearer <key>`"
CHALLENGE = {"WWW-Authenticate": "Bearer"}
# The one path that needs no key: a push callback, whose token is its credential
# (routes/callbacks.py). Exactly two segments of id characters: nothing else under /v1/ matches.
CALLBACK_PATH = re.compile(r"^/v1/callbacks/[A-Za-z0-9_-]{1,64}/[A-Za-z0-9_-]{1,64}$")


# The last segment of any path under /v1/callbacks/ (malformed ones too: `ID//TOKEN`, an
# encoded slash), up to a query, a fragment, a space or a quote.
CALLBACK_TOKEN = re.compile(r"(/v1/callbacks/(?:[^?#\s\"]*/)?)[^/?#\s\"]+")


def is_callback(path: str) -> bool:
    """Whether `path` is a push callback's (no API key; its body is not parsed)."""
    return CALLBACK_PATH.fullmatch(path) is not None


def redact(text: str) -> str:
    """`text` with the token of any push-callback path in it replaced by `***` (a credential:
    never logged)."""
    return CALLBACK_TOKEN.sub(r"\1***", text)


def tenant_of(authorization: str | None, settings: Settings) -> str | None:
    """The tenant of an `Authorization` header's bearer key; None when it names none.

    With no keys configured everyone is the one open tenant. Every key is compared (in constant
    time), so the time taken does not tell which key came close."""
    if not settings.api_keys:
        return OPEN_TENANT
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    presented = token.strip().encode()
    found = None
    for key, tenant in settings.api_keys.items():
        if hmac.compare_digest(key.encode(), presented):
            found = tenant
    return found


def tenant_for(authorization: str | None, settings: Settings) -> str:
    """The caller's tenant, or the 401 that `tenant_of` found none."""
    tenant = tenant_of(authorization, settings)
    if tenant is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, UNAUTHORIZED, headers=CHALLENGE)
    return tenant


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_open_mode(settings: Settings, host: str) -> None:
    """Refuse to serve without API keys anywhere but on loopback."""
    if not settings.api_keys and not is_loopback(host):
        raise SystemExit(
            f"refusing to listen on {host} without API keys: set VTW_API_KEYS "
            "(tenant:key,...) or bind to 127.0.0.1"
        )


def check_key_length(settings: Settings, host: str) -> None:
    """Refuse short API keys anywhere but on loopback; the message names tenants, never keys."""
    if is_loopback(host):
        return
    short = sorted(
        {tenant for key, tenant in settings.api_keys.items() if len(key) < MIN_KEY_LENGTH}
    )
    if short:
        raise SystemExit(
            f"refusing to listen on {host} with API keys shorter than {MIN_KEY_LENGTH} "
            f"characters (tenants: {', '.join(short)}): set longer keys in VTW_API_KEYS"
        )
