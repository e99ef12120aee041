"""API keys: `Authorization: Bearer <key>`; a key belongs to one tenant."""

from __future__ import annotations

import hmac
import ipaddress

from fastapi import HTTPException, Request, status

from .settings import Settings

OPEN_TENANT = "default"


def tenant_for(request: Request, settings: Settings) -> str:
    """The caller's tenant; with no keys configured everyone is the one open tenant."""
    if not settings.api_keys:
        return OPEN_TENANT
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        for key, tenant in settings.api_keys.items():
            if hmac.compare_digest(key.encode(), token.strip().encode()):
                return tenant
    raise HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        "missing or unknown API key: send `Authorization: Bearer <key>`",
        headers={"WWW-Authenticate": "Bearer"},
    )


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
