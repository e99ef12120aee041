"""Upstream credentials at rest (service/sealing.py) and their setting, VTW_SECRET_KEYS: sealed
tokens hold no header in clear, keys rotate (the first seals, all open), a token no key opens is
one clear error, a bad key is one line naming the variable and never the key, and `vtwatch dev`
makes an ephemeral key when none is set."""

from __future__ import annotations

import base64
import logging
import os

import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr, ValidationError

from service.sealing import (
    NOT_CONFIGURED_DETAIL,
    UNREADABLE_DETAIL,
    SealedSecretError,
    Sealer,
    generate_key,
    sealing_configured,
)
from service.settings import Settings
from tests.test_config_errors import assert_one_line, run
from worker.cli import describe_invalid
from worker.dev import with_ephemeral_secret_key

SECRET = "Bearer s3cr3t-t0ken-value"
HEADERS = {"Authorization": SECRET, "X-Api-Key": "another-secret-value"}


def settings(**values: object) -> Settings:
    """Settings from these values and no `VTW_*` of the environment."""
    saved = {key: value for key, value in os.environ.items() if key.startswith("VTW_")}
    for key in saved:
        del os.environ[key]
    try:
        return Settings(**values)  # type: ignore[arg-type]
    finally:
        os.environ.update(saved)


def test_a_round_trip() -> None:
    sealer = Sealer([generate_key()])

    token = sealer.seal(HEADERS)

    assert token.isascii()
    assert sealer.open(token) == HEADERS
    assert sealer.open(sealer.seal({})) == {}


def test_the_token_holds_no_header_in_clear() -> None:
    token = Sealer([generate_key()]).seal(HEADERS)

    for value in (SECRET, "s3cr3t-t0ken-value", "another-secret-value", "Authorization"):
        assert value not in token
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            assert encode(value.encode()).decode().rstrip("=") not in token


def test_the_same_headers_seal_to_different_tokens() -> None:
    sealer = Sealer([generate_key()])

    assert sealer.seal(HEADERS) != sealer.seal(HEADERS)


def test_rotation_the_first_key_seals_and_every_key_opens() -> None:
    old, new = generate_key(), generate_key()
    under_old = Sealer([old]).seal(HEADERS)

    rotating = Sealer([new, old])
    assert rotating.open(under_old) == HEADERS  # a watch registered before the rotation
    under_new = rotating.seal(HEADERS)

    assert Sealer([new]).open(under_new) == HEADERS  # the new key sealed it
    with pytest.raises(SealedSecretError):
        Sealer([old]).open(under_new)
    with pytest.raises(SealedSecretError, match="VTW_SECRET_KEYS"):
        Sealer([new]).open(under_old)  # the old key dropped too early


@pytest.mark.parametrize(
    "token",
    ["", "garbage", "gAAAAA" + "A" * 80, "ünïcode", "not base64 !!!"],
)
def test_a_token_no_key_opens_is_the_modules_error(token: str) -> None:
    key = generate_key()

    with pytest.raises(SealedSecretError) as raised:
        Sealer([key]).open(token)

    assert key not in str(raised.value)
    assert token not in str(raised.value) or not token


def test_a_tampered_token_is_the_modules_error_without_a_secret() -> None:
    key = generate_key()
    sealer = Sealer([key])
    token = sealer.seal(HEADERS)
    raw = bytearray(base64.urlsafe_b64decode(token))
    raw[40] ^= 1  # a bit of the ciphertext
    tampered = base64.urlsafe_b64encode(bytes(raw)).decode()

    with pytest.raises(SealedSecretError) as raised:
        sealer.open(tampered)

    message = str(raised.value)
    assert key not in message and SECRET not in message and tampered not in message
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


@pytest.mark.parametrize("plaintext", [b"[1, 2]", b'{"a": 1}', b"not json", b'"text"'])
def test_a_token_that_holds_no_object_of_strings_is_refused(plaintext: bytes) -> None:
    key = generate_key()

    with pytest.raises(SealedSecretError, match="not a JSON object of strings"):
        Sealer([key]).open(Fernet(key).encrypt(plaintext).decode())


def test_only_a_mapping_of_strings_is_sealed() -> None:
    with pytest.raises(TypeError):
        Sealer([generate_key()]).seal({"X-Count": 3})  # type: ignore[dict-item]


def test_a_sealer_keeps_its_keys_out_of_its_repr() -> None:
    key = generate_key()

    assert key not in repr(Sealer([key]))


def test_the_details_tell_what_to_set() -> None:
    assert "VTW_SECRET_KEYS" in NOT_CONFIGURED_DETAIL
    assert "Fernet.generate_key()" in NOT_CONFIGURED_DETAIL
    assert UNREADABLE_DETAIL == (
        "upstream credentials can no longer be decrypted (VTW_SECRET_KEYS rotated?)"
    )


# --- the setting -------------------------------------------------------------------------------


def test_no_keys_no_sealer() -> None:
    unset = settings()

    assert unset.secret_keys == ()
    assert not sealing_configured(unset)
    assert Sealer.from_settings(unset) is None
    assert settings(secret_keys="").secret_keys == ()
    assert settings(secret_keys=" , ").secret_keys == ()


def test_good_keys_parse_in_order_and_seal() -> None:
    new, old = generate_key(), generate_key()
    unpadded = old.rstrip("=")

    parsed = settings(secret_keys=f" {new} ,{unpadded}")

    assert [key.get_secret_value() for key in parsed.secret_keys] == [new, old]
    assert sealing_configured(parsed)
    sealer = Sealer.from_settings(parsed)
    assert sealer is not None
    token = sealer.seal(HEADERS)
    assert Sealer([new]).open(token) == HEADERS  # the first key seals


def test_the_keys_stay_out_of_the_settings_repr() -> None:
    key = generate_key()

    parsed = settings(secret_keys=key)

    assert key not in repr(parsed)
    assert key not in str(parsed)
    assert key not in str(parsed.model_dump())


def test_the_environment_variable_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    key = generate_key()
    monkeypatch.setenv("VTW_SECRET_KEYS", key)

    assert [k.get_secret_value() for k in Settings().secret_keys] == [key]


BAD_KEYS = {
    "short": base64.urlsafe_b64encode(b"sixteen-bytes-ok").decode(),
    "long": base64.urlsafe_b64encode(b"x" * 48).decode(),
    "not base64": "this is not base64 at all: a passphrase!",
    "standard alphabet": base64.b64encode(b"\xfb" * 32).decode(),
    "bad padding": generate_key()[:-2] + "=",
}


@pytest.mark.parametrize("bad", BAD_KEYS.values(), ids=BAD_KEYS.keys())
def test_a_bad_key_is_one_line_naming_the_variable_never_the_key(bad: str) -> None:
    good = generate_key()

    with pytest.raises(ValidationError) as raised:
        settings(secret_keys=f"{good},{bad}")

    line = describe_invalid(raised.value)
    assert "\n" not in line
    assert line.startswith("VTW_SECRET_KEYS: key 2 of 2 ")
    assert "Fernet.generate_key()" in line  # how to make one
    assert bad not in line and good not in line
    assert bad not in str(raised.value) and good not in str(raised.value)


async def test_the_cli_refuses_a_bad_key_in_one_line() -> None:
    bad = base64.urlsafe_b64encode(b"a-short-secret-key").decode()

    code, stderr = await run("api", VTW_SECRET_KEYS=bad)

    assert_one_line(code, stderr, "VTW_SECRET_KEYS", "not 32", "Fernet.generate_key()")
    assert bad not in stderr and bad.rstrip("=") not in stderr


# --- vtwatch dev -------------------------------------------------------------------------------


def test_dev_makes_an_ephemeral_key_when_none_is_set(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="worker.dev"):
        dev = with_ephemeral_secret_key(settings())

    assert len(dev.secret_keys) == 1
    sealer = Sealer.from_settings(dev)
    assert sealer is not None and sealer.open(sealer.seal(HEADERS)) == HEADERS
    said = [record.getMessage() for record in caplog.records]
    assert len(said) == 1 and said[0].startswith("VTW_SECRET_KEYS not set: using an ephemeral key")
    assert dev.secret_keys[0].get_secret_value() not in said[0]


def test_dev_keeps_the_keys_it_is_given(caplog: pytest.LogCaptureFixture) -> None:
    given = settings(secret_keys=SecretStr(generate_key()).get_secret_value())

    with caplog.at_level(logging.WARNING, logger="worker.dev"):
        dev = with_ephemeral_secret_key(given)

    assert dev is given
    assert not caplog.records
