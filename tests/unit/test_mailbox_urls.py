import pytest

from crmsync.admin.mailboxes import validate_url
from crmsync.errors import InvalidInput


@pytest.mark.parametrize(
    ("kind", "url"),
    [
        ("imap", "imap://127.0.0.1:1143"),
        ("imap", "imaps://mail.example.test"),
        ("smtp", "submission://mail.example.test:587"),
        ("smtp", "smtps://mail.example.test"),
        ("caldav", "https://dav.example.test/anna/"),
    ],
)
def test_accepted_urls(kind: str, url: str) -> None:
    assert validate_url(kind, url) == url


def test_empty_means_none() -> None:
    assert validate_url("caldav", "  ") is None
    assert validate_url("caldav", None) is None


@pytest.mark.parametrize(
    ("kind", "url", "fragment"),
    [
        ("imap", "pop3://mail.test", "scheme must be imap:// or imaps://"),
        ("imap", "imap://mail.test/INBOX", "give only the server"),
        ("smtp", "smtp://", "names no host"),
        ("imap", "imap://mail.test:99999", "invalid port"),
        ("imap", "imap://anna:pw@mail.test", "must not contain a password"),
        ("smtp", "smtp://anna:pw@mail.test", "must not contain a password"),
    ],
)
def test_rejected_urls_say_why(kind: str, url: str, fragment: str) -> None:
    with pytest.raises(InvalidInput, match=fragment):
        validate_url(kind, url)
