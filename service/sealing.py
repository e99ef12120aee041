"""Upstream credentials at rest: a watch's `upstream.headers`, sealed under `VTW_SECRET_KEYS`.

The headers (a str -> str object) are JSON-encoded and encrypted with Fernet (AES-128-CBC with
HMAC-SHA256, a timestamp and a random IV: the same headers seal to a different token each time),
so Redis, its backups and its replicas hold only an ASCII token. No I/O here: the API seals at
registration, the worker opens before each poll.

`VTW_SECRET_KEYS` is a comma-separated list of keys, each 32 random bytes in URL-safe base64
(as `Fernet.generate_key()` prints them; `SECRET_KEY_COMMAND` prints one). The first key seals;
every key opens (`MultiFernet`), so a key can be rotated without stopping anything:

1. Make a new key and put it first, the old one after it (`VTW_SECRET_KEYS=new,old`), on every
   API and worker process. Restart them; until the last one has, some may still seal under the
   old key, which every process can still open.
2. Keep the old key after the new one until every watch registered under it has ended (or been
   registered again): a watch lives for the job it watches, hours at most, so waiting out the
   longest watch is simpler than re-encrypting stored tokens (`MultiFernet.rotate` is not used).
3. Drop the old key (`VTW_SECRET_KEYS=new`).

A watch whose key was dropped too early cannot be polled with its credentials any more: `open`
raises `SealedSecretError`, and the worker ends such a watch as `error` with the detail
`UNREADABLE_DETAIL` rather than poll without them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, TypeGuard

import orjson
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from pydantic import SecretStr

from .settings import SECRET_KEY_COMMAND

if TYPE_CHECKING:
    from .settings import Settings

# The error a watch ends with when its sealed headers can no longer be opened (the worker's).
UNREADABLE_DETAIL = "upstream credentials can no longer be decrypted (VTW_SECRET_KEYS rotated?)"
# What a registration with headers is refused with (422) when nothing can seal them.
NOT_CONFIGURED_DETAIL = (
    "upstream.headers are stored encrypted and VTW_SECRET_KEYS is not set: set it to a key "
    f"made with `{SECRET_KEY_COMMAND}` (or register without headers)"
)


class SealedSecretError(Exception):
    """A sealed token that no configured key opens, or whose content is not a str -> str
    object. The message never holds the token, the keys or what the token holds."""


def generate_key() -> str:
    """A new key, as `VTW_SECRET_KEYS` takes it (44 characters of URL-safe base64)."""
    return Fernet.generate_key().decode("ascii")


def sealing_configured(settings: Settings) -> bool:
    """Whether this process can seal and open upstream credentials (VTW_SECRET_KEYS is set)."""
    return bool(settings.secret_keys)


class Sealer:
    """Seals with the first key, opens with any (see the module's docstring for rotation)."""

    __slots__ = ("_fernet",)

    def __init__(self, keys: Sequence[str | bytes | SecretStr]) -> None:
        if not keys:
            raise ValueError("a Sealer needs at least one key")
        try:
            fernets = [Fernet(_reveal(key)) for key in keys]
        except (ValueError, TypeError):
            raise ValueError(
                "a sealing key is not 32 bytes in URL-safe base64 (make one with "
                f"`{SECRET_KEY_COMMAND}`)"
            ) from None
        self._fernet = MultiFernet(fernets)

    @classmethod
    def from_settings(cls, settings: Settings) -> Sealer | None:
        """The sealer of `VTW_SECRET_KEYS`; None when it is not set."""
        return cls(settings.secret_keys) if settings.secret_keys else None

    def __repr__(self) -> str:
        return "Sealer(<keys hidden>)"

    def seal(self, headers: dict[str, str]) -> str:
        """The headers as an ASCII token, encrypted under the first key."""
        if not _is_str_map(headers):
            raise TypeError("only a str -> str mapping of headers can be sealed")
        return self._fernet.encrypt(orjson.dumps(headers)).decode("ascii")

    def open(self, token: str) -> dict[str, str]:
        """The headers a token holds; `SealedSecretError` when no key opens it (a dropped key,
        another deployment's key, a damaged token) or it holds something else."""
        try:
            plaintext = self._fernet.decrypt(token.encode("ascii"))
        except (InvalidToken, UnicodeEncodeError, AttributeError, TypeError):
            raise SealedSecretError(
                "sealed upstream credentials: no key of VTW_SECRET_KEYS decrypts them "
                "(VTW_SECRET_KEYS rotated, or the token is damaged)"
            ) from None
        try:
            headers = orjson.loads(plaintext)
        except orjson.JSONDecodeError:
            headers = None
        if not _is_str_map(headers):
            raise SealedSecretError(
                "sealed upstream credentials: decrypted, but not a JSON object of strings"
            )
        return headers


def _reveal(key: str | bytes | SecretStr) -> bytes:
    if isinstance(key, SecretStr):
        key = key.get_secret_value()
    return key.encode("ascii") if isinstance(key, str) else key


def _is_str_map(value: object) -> TypeGuard[dict[str, str]]:
    return isinstance(value, dict) and all(
        isinstance(name, str) and isinstance(item, str) for name, item in value.items()
    )
