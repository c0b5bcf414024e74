import os
import stat
from pathlib import Path

import pytest

from crmsync.config import load_settings
from crmsync.errors import SecretError
from crmsync.secrets import Secret, SecretBox, new_key


def box_with_keys(*keys: str) -> SecretBox:
    return SecretBox(load_settings({"CRMSYNC_SECRET_KEY": ",".join(keys)}))


def test_secret_never_shows_itself() -> None:
    s = Secret("hunter2")
    assert "hunter2" not in repr(s)
    assert "hunter2" not in str(s)
    assert "hunter2" not in f"{s} {s!r} {[s]}"
    assert s.reveal() == "hunter2"


def test_round_trip_and_ciphertext_hides_the_secret() -> None:
    box = box_with_keys(new_key())
    token = box.encrypt(Secret("pa55-wörd"), bound_to="mailbox:1")
    assert b"pa55" not in token
    assert box.decrypt(token, bound_to="mailbox:1").reveal() == "pa55-wörd"


def test_token_copied_to_another_row_is_refused() -> None:
    box = box_with_keys(new_key())
    token = box.encrypt(Secret("x"), bound_to="mailbox:1")
    with pytest.raises(SecretError, match="belongs to another record"):
        box.decrypt(token, bound_to="mailbox:2")


def test_rotation_keeps_old_tokens_readable_then_rewrites_them() -> None:
    old, new = new_key(), new_key()
    token = box_with_keys(old).encrypt(Secret("s"), bound_to="m")
    both = box_with_keys(new, old)
    assert both.decrypt(token, bound_to="m").reveal() == "s"
    rotated = both.rotate(token)
    assert box_with_keys(new).decrypt(rotated, bound_to="m").reveal() == "s"
    with pytest.raises(SecretError, match="cannot be decrypted"):
        box_with_keys(old).decrypt(rotated, bound_to="m")


def test_wrong_key_gives_an_actionable_error() -> None:
    token = box_with_keys(new_key()).encrypt(Secret("s"), bound_to="mailbox:7")
    with pytest.raises(SecretError, match=r"mailbox:7.*changed or lost"):
        box_with_keys(new_key()).decrypt(token, bound_to="mailbox:7")


def test_invalid_key_is_named() -> None:
    with pytest.raises(SecretError, match="key #2 in CRMSYNC_SECRET_KEY"):
        box_with_keys(new_key(), "not-a-key")


def test_key_file_created_once_with_0600(tmp_path: Path) -> None:
    settings = load_settings({"CRMSYNC_HOME": str(tmp_path / "home")})
    token = SecretBox(settings).encrypt(Secret("s"), bound_to="m")
    mode = stat.S_IMODE(os.stat(settings.key_file).st_mode)
    assert mode == 0o600
    # a second box reads the same key instead of making a new one
    assert SecretBox(settings).decrypt(token, bound_to="m").reveal() == "s"


def test_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    settings = load_settings({"CRMSYNC_HOME": str(tmp_path)})
    SecretBox(settings)
    settings.key_file.chmod(0o644)
    with pytest.raises(SecretError, match="chmod 600"):
        SecretBox(settings)
