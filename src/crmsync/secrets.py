"""Credentials encrypted at rest.

Keys come from ``CRMSYNC_SECRET_KEY`` (comma-separated Fernet keys, newest first) or, when that is
unset, from ``$CRMSYNC_HOME/secret.key`` (one key per line, newest first), created with mode 0600 on
first use. ``MultiFernet`` encrypts with the newest key and decrypts with any, so a key is rotated
by putting a new one in front and running ``crmsync secrets rotate`` later.

Fernet cannot bind a token to the row it belongs to, so the row's identity is put inside the
encrypted payload and checked on decryption: a token copied onto another mailbox fails to open.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from crmsync.config import Settings
from crmsync.errors import SecretError


class Secret:
    """A string that never shows itself in repr, str, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def _parse_keys(raw: list[str], origin: str) -> list[Fernet]:
    fernets = []
    for i, key in enumerate(raw, start=1):
        try:
            fernets.append(Fernet(key.encode()))
        except (ValueError, TypeError):
            raise SecretError(
                f"key #{i} in {origin} is not a valid Fernet key (32 url-safe base64 bytes); "
                "generate one with: crmsync secrets new-key"
            ) from None
    return fernets


def _read_or_create_key_file(path: Path) -> list[str]:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_EXCL: two processes starting at once must not both write a different key.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as fh:
                fh.write(Fernet.generate_key().decode() + "\n")
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise SecretError(
            f"{path} is readable by other users (mode {mode:o}); run: chmod 600 {path}"
        )
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    keys = [ln for ln in lines if ln and not ln.startswith("#")]
    if not keys:
        raise SecretError(f"{path} holds no key; delete it to have a new one created")
    return keys


class SecretBox:
    """Encrypts and decrypts secrets bound to the row they belong to."""

    def __init__(self, settings: Settings) -> None:
        if settings.secret_keys:
            keys, origin = list(settings.secret_keys), "CRMSYNC_SECRET_KEY"
        else:
            keys, origin = _read_or_create_key_file(settings.key_file), str(settings.key_file)
        self._fernet = MultiFernet(_parse_keys(keys, origin))
        self.origin = origin

    def encrypt(self, secret: Secret, *, bound_to: str) -> bytes:
        payload = json.dumps({"v": 1, "for": bound_to, "secret": secret.reveal()})
        return self._fernet.encrypt(payload.encode())

    def decrypt(self, token: bytes, *, bound_to: str) -> Secret:
        try:
            payload = json.loads(self._fernet.decrypt(bytes(token)))
        except InvalidToken:
            raise SecretError(
                f"the stored credential of {bound_to} cannot be decrypted with the keys from "
                f"{self.origin}; the key was changed or lost — restore it, or set the "
                "password again"
            ) from None
        if payload.get("for") != bound_to:
            raise SecretError(
                f"the stored credential of {bound_to} belongs to another record; "
                "set the password again"
            )
        return Secret(payload["secret"])

    def rotate(self, token: bytes) -> bytes:
        """Re-encrypt a token with the newest key (its binding is kept)."""
        try:
            return self._fernet.rotate(bytes(token))
        except InvalidToken:
            raise SecretError(
                "a stored credential cannot be decrypted with the current keys"
            ) from None


def new_key() -> str:
    return Fernet.generate_key().decode()
