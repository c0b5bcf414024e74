from pathlib import Path

import pytest

from crmsync.config import DEFAULT_HOME, load_settings
from crmsync.errors import ConfigError


def test_defaults_need_nothing() -> None:
    s = load_settings({})
    assert s.home == DEFAULT_HOME
    assert s.database_url is None
    assert s.secret_keys == ()
    assert s.key_file == DEFAULT_HOME / "secret.key"
    assert (s.log_level, s.log_format) == ("warning", "console")


def test_values_from_environment(tmp_path: Path) -> None:
    s = load_settings(
        {
            "CRMSYNC_HOME": str(tmp_path),
            "CRMSYNC_DATABASE_URL": "postgresql://u@h/db",
            "CRMSYNC_SECRET_KEY": " k1 , k2,",
            "CRMSYNC_LOG_LEVEL": "DEBUG",
            "CRMSYNC_LOG_FORMAT": "json",
        }
    )
    assert s.home == tmp_path
    assert s.embedded_pgdata == tmp_path / "pgdata"
    assert s.database_url == "postgresql://u@h/db"
    assert s.secret_keys == ("k1", "k2")
    assert (s.log_level, s.log_format) == ("debug", "json")


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"CRMSYNC_DATABASE_URL": "sqlite:///x.db"}, "PostgreSQL"),
        ({"CRMSYNC_LOG_LEVEL": "loud"}, "CRMSYNC_LOG_LEVEL"),
        ({"CRMSYNC_LOG_FORMAT": "xml"}, "CRMSYNC_LOG_FORMAT"),
    ],
)
def test_invalid_values_say_what_is_wrong(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_settings(env)
