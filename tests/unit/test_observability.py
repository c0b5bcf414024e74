from crmsync.observability import redact


def test_secret_looking_keys_are_redacted() -> None:
    event = redact(None, "info", {"event": "login", "password": "p", "api_token": "t", "user": "u"})
    assert event == {"event": "login", "password": "***", "api_token": "***", "user": "u"}


def test_passwords_inside_urls_are_redacted() -> None:
    event = redact(None, "info", {"event": "connect", "url": "imaps://anna:s3cret@mail.test:993/"})
    assert event["url"] == "imaps://anna:***@mail.test:993/"
