"""Correlation: each method, their order, the switches, Message-ID normalization, thread keys."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import pytest

from crmsync.core.correlate import (
    DEFAULT_HASH_FILTER_KEYWORDS,
    CorrelationFacts,
    CorrelationLookup,
    CorrelationMethod,
    CorrelationSettings,
    SmartCandidate,
    SmartMatchingSettings,
    TrackedEmail,
    address_hashes,
    correlate,
    normalize_message_id,
    parse_message_ids,
    subject_hashes,
    subject_words,
    thread_key,
)
from crmsync.core.tokens import TokenFormat, make_token

M = CorrelationMethod
T0 = datetime(2026, 1, 1, tzinfo=UTC)
TOKEN = make_token(TokenFormat(), 5, 17)


@dataclass
class FakeLookup:
    """An in-memory implementation of our own CorrelationLookup protocol."""

    emails: list[TrackedEmail] = field(default_factory=list)
    tokens: dict[str, list[str]] = field(default_factory=dict)
    """token -> email ids"""
    threads: dict[str, list[str]] = field(default_factory=dict)
    """thread key -> email ids"""
    smart: list[SmartCandidate] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)

    def _by_ids(self, ids: Sequence[str]) -> list[TrackedEmail]:
        return [e for i in ids for e in self.emails if e.id == i]

    def by_message_ids(self, message_ids: Sequence[str]) -> Sequence[TrackedEmail]:
        self.calls.append("by_message_ids")
        return [e for e in self.emails if e.message_id in message_ids]

    def by_token(self, token: str) -> Sequence[TrackedEmail]:
        self.calls.append("by_token")
        return self._by_ids(self.tokens.get(token, []))

    def by_thread_key(self, thread_key: str) -> Sequence[TrackedEmail]:
        self.calls.append("by_thread_key")
        return self._by_ids(self.threads.get(thread_key, []))

    def smart_candidates(
        self, subject_hashes: Collection[str], address_hashes: Collection[str]
    ) -> Sequence[SmartCandidate]:
        self.calls.append("smart_candidates")
        return [
            c
            for c in self.smart
            if c.subject_hashes & set(subject_hashes) or c.address_hashes & set(address_hashes)
        ]


def email(id_: str, mid: str | None = None, regarding: str | None = "case-1", age: int = 0):
    return TrackedEmail(id_, regarding, mid, T0 - timedelta(days=age))


def smart_candidate(e: TrackedEmail, subject: str, addresses: list[str]) -> SmartCandidate:
    return SmartCandidate(
        e, frozenset(subject_hashes(subject)), frozenset(address_hashes(addresses))
    )


ADDRESSES = ("ann@client.example", "me@ourco.example", "bob@client.example")
REPLY = CorrelationFacts.from_headers(
    message_id="<reply@client.example>",
    in_reply_to="<parent@ourco.example>",
    references="<root@ourco.example> <parent@ourco.example>",
    subject=f"RE: Quote for spring {TOKEN.text}",
    addresses=ADDRESSES,
)


def everything() -> FakeLookup:
    """A lookup where every method would find something different."""
    return FakeLookup(
        emails=[
            email("e-parent", "parent@ourco.example", "case-parent"),
            email("e-root", "root@ourco.example", "case-root", age=5),
        ],
        tokens={TOKEN.text: ["e-token"]},
        threads={"root@ourco.example": ["e-thread"]},
        smart=[smart_candidate(email("e-smart"), "Quote for spring", list(ADDRESSES))],
    )


def test_in_reply_to_comes_first_and_sets_the_parent() -> None:
    result = correlate(REPLY, everything())
    assert result.method is M.IN_REPLY_TO
    assert result.matched_email_id == "e-parent"
    assert result.inherit_regarding_from == "e-parent"
    assert result.parent_email_id == "e-parent"
    assert "parent@ourco.example" in result.detail


def test_then_the_tracking_token() -> None:
    lookup = everything()
    lookup.emails = [*lookup.emails, email("e-token")]
    result = correlate(REPLY, lookup, CorrelationSettings(use_in_reply_to=False))
    assert result.method is M.TRACKING_TOKEN
    assert result.matched_email_id == "e-token"
    assert result.parent_email_id is None  # Dynamics: parent only for header matches
    assert TOKEN.text in result.detail


def test_then_references_nearest_ancestor_first() -> None:
    settings = CorrelationSettings(use_in_reply_to=False, use_tracking_token=False)
    result = correlate(REPLY, everything(), settings)
    assert result.method is M.THREAD
    assert result.matched_email_id == "e-parent"  # the parent, not the root
    assert result.parent_email_id == "e-parent"


def test_then_the_thread_key() -> None:
    lookup = everything()
    lookup.emails = [email("e-thread", "other@ourco.example", age=1)]
    settings = CorrelationSettings(use_in_reply_to=False, use_tracking_token=False)
    result = correlate(REPLY, lookup, settings)
    assert result.method is M.THREAD
    assert result.matched_email_id == "e-thread"
    assert result.parent_email_id is None
    assert "root@ourco.example" in result.detail


def test_then_smart_matching_when_turned_on() -> None:
    lookup = everything()
    lookup.emails = [email("e-smart")]
    lookup.threads = {}
    off = CorrelationSettings(use_in_reply_to=False, use_tracking_token=False)
    assert correlate(REPLY, lookup, off).method is M.NONE
    assert "smart_candidates" not in lookup.calls  # off by default
    on = replace(off, use_smart_matching=True)
    result = correlate(REPLY, lookup, on)
    assert result.method is M.SMART_MATCHING
    assert result.matched_email_id == "e-smart"
    assert "3 shared addresses" in result.detail


def test_each_method_can_be_turned_off_alone() -> None:
    lookup = everything()
    lookup.emails = [*lookup.emails, email("e-token")]
    no_token = CorrelationSettings(use_in_reply_to=False, use_tracking_token=False)
    assert correlate(REPLY, lookup, no_token).method is M.THREAD
    only_token = CorrelationSettings(use_in_reply_to=False, use_thread=False)
    assert correlate(REPLY, lookup, only_token).method is M.TRACKING_TOKEN
    ignoring = CorrelationSettings.ignoring_headers()
    assert correlate(REPLY, lookup, ignoring).method is M.TRACKING_TOKEN
    tokens_off = CorrelationSettings(use_in_reply_to=False, use_thread=False, token_format=None)
    assert correlate(REPLY, lookup, tokens_off).method is M.SKIPPED  # nothing left to try


def test_correlation_off_is_skipped() -> None:
    lookup = everything()
    result = correlate(REPLY, lookup, CorrelationSettings(enabled=False))
    assert result.method is M.SKIPPED and result.matched_email_id is None
    assert lookup.calls == []
    all_off = CorrelationSettings(use_in_reply_to=False, use_tracking_token=False, use_thread=False)
    assert correlate(REPLY, lookup, all_off).method is M.SKIPPED


def test_nothing_found() -> None:
    result = correlate(REPLY, FakeLookup())
    assert result == replace(result, method=M.NONE, matched_email_id=None)
    assert result.inherit_regarding_from is None
    assert "In-Reply-To names no tracked email" in result.detail
    assert "no tracked email in the thread" in result.detail


def test_a_new_thread_is_not_looked_up_by_thread() -> None:
    new = CorrelationFacts.from_headers(message_id="<new@x.example>", subject="Hello")
    lookup = FakeLookup(threads={"new@x.example": ["e-self"]}, emails=[email("e-self")])
    result = correlate(new, lookup)
    assert result.method is M.NONE
    assert "by_thread_key" not in lookup.calls
    assert "a new thread" in result.detail


def test_a_message_never_correlates_with_itself() -> None:
    facts = CorrelationFacts.from_headers(
        message_id="<same@x.example>", in_reply_to="<same@x.example>"
    )
    lookup = FakeLookup(emails=[email("e-self", "same@x.example")])
    assert correlate(facts, lookup).method is M.NONE


def test_no_regarding_means_nothing_to_inherit() -> None:
    lookup = FakeLookup(emails=[email("e-parent", "parent@ourco.example", regarding=None)])
    result = correlate(REPLY, lookup)
    assert result.matched_email_id == "e-parent"
    assert result.inherit_regarding_from is None
    assert "no regarding record" in result.detail


def test_in_reply_to_prefers_the_copy_with_a_regarding() -> None:
    # A message sent between two CRM users is two activities (sent and received copy).
    lookup = FakeLookup(
        emails=[
            email("sent-copy", "parent@ourco.example", regarding=None),
            email("received-copy", "parent@ourco.example", regarding="case-9", age=1),
        ]
    )
    assert correlate(REPLY, lookup).matched_email_id == "received-copy"


def test_in_reply_to_with_several_ids_follows_their_order() -> None:
    facts = CorrelationFacts.from_headers(
        message_id="<r@x.example>", in_reply_to="<a@x.example> <b@x.example>"
    )
    lookup = FakeLookup(emails=[email("e-b", "b@x.example"), email("e-a", "a@x.example")])
    assert correlate(facts, lookup).matched_email_id == "e-a"


def test_token_prefers_the_newest_email() -> None:
    # counters wrap 999 -> 000: an old email with the same token is a stale one
    lookup = FakeLookup(
        emails=[email("old", age=400), email("new", age=1)],
        tokens={TOKEN.text: ["old", "new"]},
    )
    settings = CorrelationSettings(use_in_reply_to=False)
    assert correlate(REPLY, lookup, settings).matched_email_id == "new"


def test_token_of_another_format_is_not_ours() -> None:
    facts = replace(REPLY, subject=f"RE: Quote {TOKEN.text}")
    lookup = FakeLookup(emails=[email("e-token")], tokens={TOKEN.text: ["e-token"]})
    settings = CorrelationSettings(
        use_in_reply_to=False, use_thread=False, token_format=TokenFormat(prefix="REF:")
    )
    assert correlate(facts, lookup, settings).method is M.NONE


# --- smart matching -------------------------------------------------------------------------


def smart_facts(subject: str, addresses: tuple[str, ...] = ADDRESSES) -> CorrelationFacts:
    return CorrelationFacts.from_headers(
        message_id="<s@client.example>", subject=subject, addresses=addresses
    )


SMART_ONLY = CorrelationSettings(
    use_in_reply_to=False, use_tracking_token=False, use_thread=False, use_smart_matching=True
)


@pytest.mark.parametrize(
    ("subject", "addresses", "candidate_subject", "candidate_addresses", "matches"),
    [
        ("RE: FW: Quote for spring", ADDRESSES, "Quote for spring", ADDRESSES, True),
        ("AW: quote FOR Spring", ADDRESSES[:2], "Quote for spring", ADDRESSES, True),
        ("Quote for spring", ADDRESSES[:1], "Quote for spring", ADDRESSES, False),  # 1 address
        ("Quote for spring", ADDRESSES, "Quote for summer", ADDRESSES, False),
        ("Quote for spring", ADDRESSES, "Quote for spring 2026", ADDRESSES, False),  # count
        ("RE:", ADDRESSES, "", ADDRESSES, False),  # no subject words
        (f"Quote for spring {TOKEN.text}", ADDRESSES, "Quote for spring", ADDRESSES, True),
    ],
)
def test_smart_matching(subject, addresses, candidate_subject, candidate_addresses, matches):
    lookup = FakeLookup(
        smart=[smart_candidate(email("e-smart"), candidate_subject, list(candidate_addresses))]
    )
    result = correlate(smart_facts(subject, addresses), lookup, SMART_ONLY)
    assert (result.method is M.SMART_MATCHING) is matches


def test_smart_matching_delta_allows_a_different_word_count() -> None:
    lookup = FakeLookup(
        smart=[smart_candidate(email("e"), "Quote for spring 2026", list(ADDRESSES))]
    )
    loose = replace(SMART_ONLY, smart=SmartMatchingSettings(delta_subject_count=1))
    assert correlate(smart_facts("Quote for spring"), lookup, loose).matched_email_id == "e"


def test_smart_matching_prefers_more_shared_addresses_then_the_newest() -> None:
    two = smart_candidate(email("two", age=0), "Quote", list(ADDRESSES[:2]))
    three_old = smart_candidate(email("three-old", age=9), "Quote", list(ADDRESSES))
    three_new = smart_candidate(email("three-new", age=1), "Quote", list(ADDRESSES))
    lookup = FakeLookup(smart=[two, three_old, three_new])
    assert correlate(smart_facts("Quote"), lookup, SMART_ONLY).matched_email_id == "three-new"


def test_subject_words_and_hashes() -> None:
    assert subject_words("RE: AW:  Fwd: Quote, for SPRING!") == ("quote", "for", "spring")
    assert subject_words("Quote quote QUOTE") == ("quote",)
    assert subject_words("") == ()
    assert subject_words("x " * 50) == ("x",)
    assert len(subject_words(" ".join(f"w{i}" for i in range(50)))) == 20  # HashMaxCount
    # The hash is stored and compared for years: it must never change.
    assert subject_hashes("Quote") == ("01d7f282c3bac153",)
    assert address_hashes(["ann@client.example"]) == ("060c8ad229b4c811",)
    assert subject_hashes("RE: Quote") == subject_hashes("quote")
    assert address_hashes(["Ann <ANN@client.example>"]) == address_hashes(["ann@client.example"])
    assert len(address_hashes([f"u{i}@x.example" for i in range(30)])) == 20


def test_default_filter_keywords_are_dynamics() -> None:
    assert DEFAULT_HASH_FILTER_KEYWORDS == r"^[\s]*([\w]+\s?:[\s]*)+"


def test_smart_settings_validation() -> None:
    with pytest.raises(ValueError, match="not a valid regular expression"):
        SmartMatchingSettings(filter_keywords="([")
    with pytest.raises(ValueError, match="min address count"):
        SmartMatchingSettings(min_address_count=0)


# --- message ids and thread keys ------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("<AbC.123@Mail.Example.COM>", "AbC.123@mail.example.com"),
        ("  <abc@x.example>  ", "abc@x.example"),
        ("abc@X.example", "abc@x.example"),
        ("<abc@x.\r\n example>", "abc@x.example"),  # folded
        ("<a@b@C.example>", "a@b@c.example"),  # only the part after the last @
        ("<no-at-sign>", "no-at-sign"),
        ("<>", None),
        ("", None),
        ("   ", None),
        (None, None),
    ],
)
def test_normalize_message_id(raw, expected) -> None:
    assert normalize_message_id(raw) == expected


def test_local_part_case_is_kept() -> None:
    assert normalize_message_id("<ABC@x.example>") != normalize_message_id("<abc@x.example>")


def test_parse_message_ids() -> None:
    assert parse_message_ids("<a@X.example> <b@x.example>\r\n <a@x.example>") == (
        "a@x.example",
        "b@x.example",
    )
    assert parse_message_ids("a@x.example, b@x.example") == ("a@x.example", "b@x.example")
    assert parse_message_ids(["a@X.example", "<b@x.example>"]) == ("a@x.example", "b@x.example")
    assert parse_message_ids(None) == ()


def test_thread_key_is_twentys() -> None:
    assert thread_key("<m@x>", ["<p@x>"], ["<Root@X>", "<p@x>"]) == "Root@x"
    assert thread_key("<m@x>", ["<p@X>"], []) == "p@x"
    assert thread_key("<m@X>") == "m@x"
    assert thread_key(None) is None
    assert REPLY.thread_key == "root@ourco.example"


def test_the_fake_is_a_correlation_lookup() -> None:
    lookup: CorrelationLookup = FakeLookup()  # checked by a type checker
    assert correlate(CorrelationFacts(), lookup).method is M.NONE
