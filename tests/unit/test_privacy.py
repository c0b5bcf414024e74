import pytest

from crmsync.core.privacy import PrivacyLevel, effective_level, fetch_plan

M, S, E = PrivacyLevel.METADATA, PrivacyLevel.SUBJECT, PrivacyLevel.EVERYTHING


@pytest.mark.parametrize(
    ("org", "mailbox", "expected"),
    [(E, None, E), (M, None, M), (E, S, S), (E, M, M), (S, E, S), (M, E, M), (S, M, M), (S, S, S)],
)
def test_org_level_is_a_ceiling(org, mailbox, expected) -> None:
    assert effective_level(org, mailbox) is expected


def test_metadata_fetches_no_subject_and_no_body() -> None:
    plan = fetch_plan(M)
    assert not plan.subject
    assert not plan.full_message
    assert "Message-ID" in plan.header_fields and "In-Reply-To" in plan.header_fields
    assert not any(h.lower() == "subject" for h in plan.header_fields)


def test_subject_level_adds_only_the_subject() -> None:
    plan = fetch_plan(S)
    assert plan.subject and not plan.full_message
    assert set(plan.header_fields) - set(fetch_plan(M).header_fields) == {"Subject"}


def test_everything_may_fetch_the_whole_message() -> None:
    assert fetch_plan(E).full_message and fetch_plan(E).subject


def test_levels_read_back_as_strings_do_not_fail_open() -> None:
    assert not fetch_plan("metadata").subject
    assert not fetch_plan("metadata").full_message
    assert effective_level("everything", "metadata") is M
    assert effective_level("subject", None) is S
    with pytest.raises(ValueError):
        fetch_plan("all")
