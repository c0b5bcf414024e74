"""The tracking ("promote") decision: each filter, sender kind, reply, folder, bulk, blocklist."""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from crmsync.core.addresses import AutomaticKind, AutomaticMail, AutomaticReason, Blocklist
from crmsync.core.parties import Candidate, PartyOptions
from crmsync.core.promote import (
    REASON_SENTENCES,
    CrmOwner,
    Decision,
    FolderKind,
    IncomingFilter,
    IncomingLookup,
    MessageFacts,
    OwnerKind,
    ReasonCode,
    SenderKind,
    TrackingSettings,
    check_incoming,
    decide,
    sender_kind,
)
from crmsync.core.tokens import TokenFormat, make_token

F = IncomingFilter
K = SenderKind
R = ReasonCode

ME = CrmOwner("user-me", OwnerKind.USER, F.RESPONSES, "me@ourco.example", "Me")
BULK = AutomaticMail(AutomaticKind.BULK, AutomaticReason.LIST_ID, "List-Id: <news.example>")
AUTO = AutomaticMail(
    AutomaticKind.AUTOMATIC, AutomaticReason.AUTO_SUBMITTED, "Auto-Submitted: auto-replied"
)


def facts(**changes: object) -> MessageFacts:
    base = MessageFacts(
        message_id="m1@client.example",
        subject="Quote",
        sender="ann@client.example",
        to=("me@ourco.example",),
        mailbox=ME,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


# Inbox, not bulk, not blocklisted: what each filter does with each sender kind, reply or not.
FILTER_TABLE: list[tuple[IncomingFilter, SenderKind, bool, ReasonCode]] = [
    (F.ALL, K.LEAD_CONTACT_ACCOUNT, False, R.FILTER_ALL),
    (F.ALL, K.LEAD_CONTACT_ACCOUNT, True, R.FILTER_ALL),
    (F.ALL, K.EMAIL_ENABLED, False, R.FILTER_ALL),
    (F.ALL, K.EMAIL_ENABLED, True, R.FILTER_ALL),
    (F.ALL, K.UNKNOWN, False, R.FILTER_ALL),
    (F.ALL, K.UNKNOWN, True, R.FILTER_ALL),
    (F.RESPONSES, K.LEAD_CONTACT_ACCOUNT, False, R.NOT_A_REPLY),
    (F.RESPONSES, K.LEAD_CONTACT_ACCOUNT, True, R.REPLY_TO_TRACKED),
    (F.RESPONSES, K.EMAIL_ENABLED, False, R.NOT_A_REPLY),
    (F.RESPONSES, K.EMAIL_ENABLED, True, R.REPLY_TO_TRACKED),
    (F.RESPONSES, K.UNKNOWN, False, R.NOT_A_REPLY),
    (F.RESPONSES, K.UNKNOWN, True, R.REPLY_TO_TRACKED),
    (F.LEADS_CONTACTS_ACCOUNTS, K.LEAD_CONTACT_ACCOUNT, False, R.FROM_CRM_RECORD),
    (F.LEADS_CONTACTS_ACCOUNTS, K.LEAD_CONTACT_ACCOUNT, True, R.FROM_CRM_RECORD),
    (F.LEADS_CONTACTS_ACCOUNTS, K.EMAIL_ENABLED, False, R.SENDER_NOT_LEAD_CONTACT_ACCOUNT),
    (F.LEADS_CONTACTS_ACCOUNTS, K.EMAIL_ENABLED, True, R.SENDER_NOT_LEAD_CONTACT_ACCOUNT),
    (F.LEADS_CONTACTS_ACCOUNTS, K.UNKNOWN, False, R.SENDER_NOT_IN_CRM),
    (F.LEADS_CONTACTS_ACCOUNTS, K.UNKNOWN, True, R.SENDER_NOT_IN_CRM),
    (F.EMAIL_ENABLED, K.LEAD_CONTACT_ACCOUNT, False, R.FROM_EMAIL_ENABLED_RECORD),
    (F.EMAIL_ENABLED, K.LEAD_CONTACT_ACCOUNT, True, R.FROM_EMAIL_ENABLED_RECORD),
    (F.EMAIL_ENABLED, K.EMAIL_ENABLED, False, R.FROM_EMAIL_ENABLED_RECORD),
    (F.EMAIL_ENABLED, K.EMAIL_ENABLED, True, R.FROM_EMAIL_ENABLED_RECORD),
    (F.EMAIL_ENABLED, K.UNKNOWN, False, R.SENDER_NOT_IN_CRM),
    (F.EMAIL_ENABLED, K.UNKNOWN, True, R.SENDER_NOT_IN_CRM),
    (F.NONE, K.LEAD_CONTACT_ACCOUNT, False, R.FILTER_NONE),
    (F.NONE, K.LEAD_CONTACT_ACCOUNT, True, R.FILTER_NONE),
    (F.NONE, K.EMAIL_ENABLED, False, R.FILTER_NONE),
    (F.NONE, K.EMAIL_ENABLED, True, R.FILTER_NONE),
    (F.NONE, K.UNKNOWN, False, R.FILTER_NONE),
    (F.NONE, K.UNKNOWN, True, R.FILTER_NONE),
]


def test_the_table_covers_every_combination() -> None:
    combos = {(f, k, r) for f, k, r, _ in FILTER_TABLE}
    assert combos == set(itertools.product(F, K, (False, True)))


def _case(
    filter_: IncomingFilter, kind: SenderKind, reply: bool, **changes: object
) -> MessageFacts:
    return facts(
        mailbox=replace(ME, filter=filter_),
        sender_kind=kind,
        is_reply_to_tracked=reply,
        **changes,
    )


@pytest.mark.parametrize(("filter_", "kind", "reply", "expected"), FILTER_TABLE)
def test_inbox_filters(filter_, kind, reply, expected) -> None:
    decision = decide(_case(filter_, kind, reply), TrackingSettings())
    assert decision.reason is expected
    assert decision.should_track is expected.tracks
    assert decision.accepted_by == ("user-me" if expected.tracks else None)
    assert decision.detail


@pytest.mark.parametrize(("filter_", "kind", "reply", "expected"), FILTER_TABLE)
@pytest.mark.parametrize(
    ("changes", "settings", "outcome"),
    [
        ({"folder": FolderKind.OTHER}, TrackingSettings(), R.FOLDER_NOT_TRACKED),
        (
            {"folder": FolderKind.OTHER},
            TrackingSettings(track_sent_items=True),
            R.FOLDER_NOT_TRACKED,
        ),
        ({"folder": FolderKind.SENT}, TrackingSettings(), R.SENT_ITEMS_OFF),
        ({"automatic": BULK}, TrackingSettings(), R.BULK_MAIL),
        ({"automatic": BULK}, TrackingSettings(track_automatic_mail=True), R.BULK_MAIL),
        ({"automatic": AUTO}, TrackingSettings(), R.AUTO_SUBMITTED),
        ({"automatic": AUTO}, TrackingSettings(track_bulk_mail=True), R.AUTO_SUBMITTED),
        (
            {},
            TrackingSettings(blocklist=Blocklist.from_entries(["@client.example"])),
            R.BLOCKLISTED,
        ),
        (
            {"automatic": BULK},
            TrackingSettings(blocklist=Blocklist.from_entries(["ann@client.example"])),
            R.BLOCKLISTED,
        ),
        # the option lets the mail through to the filters, which then decide as in the table
        ({"automatic": BULK}, TrackingSettings(track_bulk_mail=True), None),
        ({"automatic": AUTO}, TrackingSettings(track_automatic_mail=True), None),
        ({"folder": FolderKind.INBOX}, TrackingSettings(), None),
    ],
)
def test_folder_bulk_and_blocklist_come_before_filters(
    filter_, kind, reply, expected, changes, settings, outcome
) -> None:
    decision = decide(_case(filter_, kind, reply, **changes), settings)
    assert decision.reason is (expected if outcome is None else outcome)
    assert decision.should_track is decision.reason.tracks


@pytest.mark.parametrize(("filter_", "kind", "reply", "expected"), FILTER_TABLE)
def test_sent_items_with_the_option_judge_the_recipients(filter_, kind, reply, expected) -> None:
    # In Sent items the other side is the recipients: their kind is what the record filters read.
    case = _case(
        filter_,
        SenderKind.UNKNOWN,
        reply,
        folder=FolderKind.SENT,
        sender="me@ourco.example",
        to=("ann@client.example",),
        recipients_kind=kind,
    )
    decision = decide(case, TrackingSettings(track_sent_items=True))
    assert decision.reason is expected


def test_sent_items_ignore_other_crm_recipients() -> None:
    queue = CrmOwner("q-support", OwnerKind.QUEUE, F.ALL, "support@ourco.example")
    case = facts(folder=FolderKind.SENT, crm_recipients=(queue,))
    decision = decide(case, TrackingSettings(track_sent_items=True))
    assert decision.reason is R.NOT_A_REPLY  # the queue judges its own received copy


@pytest.mark.parametrize(
    "changes",
    [
        {"folder": FolderKind.OTHER},
        {"folder": FolderKind.SENT},
        {"automatic": BULK},
        {"automatic": AUTO},
        {"mailbox": replace(ME, filter=F.NONE)},
        {"sender": "spam@blocked.example"},
    ],
)
def test_manual_tracking_always_tracks(changes) -> None:
    settings = TrackingSettings(blocklist=Blocklist.from_entries(["@blocked.example"]))
    decision = decide(facts(**changes), settings, manual=True)
    assert decision == Decision(True, R.MANUAL, "user-me", decision.detail)
    assert "by hand" in decision.detail


def test_another_recipients_filter_may_accept() -> None:
    queue = CrmOwner("q-support", OwnerKind.QUEUE, F.ALL, "support@ourco.example", "Support")
    case = facts(to=("me@ourco.example", "support@ourco.example"), crm_recipients=(queue,))
    decision = decide(case, TrackingSettings())
    assert decision.should_track and decision.reason is R.FILTER_ALL
    assert decision.accepted_by == "q-support"
    assert "queue Support tracks all email" in decision.detail
    assert "not accepted by: user Me" in decision.detail


def test_restrict_option_counts_only_the_syncing_mailbox() -> None:
    queue = CrmOwner("q-support", OwnerKind.QUEUE, F.ALL, "support@ourco.example", "Support")
    case = facts(crm_recipients=(queue,))
    decision = decide(case, TrackingSettings(restrict_to_syncing_mailbox=True))
    assert not decision.should_track and decision.reason is R.NOT_A_REPLY
    assert "only the syncing mailbox" in decision.detail


def test_the_syncing_mailbox_is_asked_first_then_recipients_in_order() -> None:
    a = CrmOwner("user-a", OwnerKind.USER, F.ALL, "a@ourco.example")
    b = CrmOwner("user-b", OwnerKind.USER, F.ALL, "b@ourco.example")
    assert decide(facts(crm_recipients=(a, b)), TrackingSettings()).accepted_by == "user-a"
    assert decide(facts(crm_recipients=(b, a)), TrackingSettings()).accepted_by == "user-b"
    mine = facts(mailbox=replace(ME, filter=F.ALL), crm_recipients=(a, b))
    assert decide(mine, TrackingSettings()).accepted_by == "user-me"


def test_refusal_reason_is_the_syncing_mailboxs_and_the_detail_lists_all() -> None:
    none_queue = CrmOwner("q", OwnerKind.QUEUE, F.NONE, "q@ourco.example", "Sales")
    decision = decide(facts(crm_recipients=(none_queue,)), TrackingSettings())
    assert decision.reason is R.NOT_A_REPLY
    assert "queue Sales tracks no email automatically" in decision.detail


def test_the_same_owner_twice_is_asked_once() -> None:
    decision = decide(facts(crm_recipients=(ME,)), TrackingSettings())
    assert decision.detail.count("user Me") == 1


def test_no_crm_recipient() -> None:
    decision = decide(facts(mailbox=None), TrackingSettings())
    assert decision.reason is R.NO_CRM_RECIPIENT and not decision.should_track
    sent = facts(mailbox=None, folder=FolderKind.SENT)
    assert decide(sent, TrackingSettings(track_sent_items=True)).reason is R.NO_CRM_RECIPIENT


def test_without_a_syncing_mailbox_the_restriction_has_nothing_to_restrict_to() -> None:
    queue = CrmOwner("q", OwnerKind.QUEUE, F.ALL, "q@ourco.example")
    case = facts(mailbox=None, crm_recipients=(queue,))
    decision = decide(case, TrackingSettings(restrict_to_syncing_mailbox=True))
    assert decision.should_track and decision.accepted_by == "q"


def test_already_tracked_links_whatever_the_filter_but_not_outside_the_inbox() -> None:
    none_filter = facts(mailbox=replace(ME, filter=F.NONE), already_tracked=True)
    decision = decide(none_filter, TrackingSettings())
    assert decision.should_track and decision.reason is R.ALREADY_TRACKED
    assert decision.accepted_by is None
    archived = replace(none_filter, folder=FolderKind.OTHER)
    assert decide(archived, TrackingSettings()).reason is R.FOLDER_NOT_TRACKED


def test_blocklist_spares_the_crm_mailboxes_own_addresses() -> None:
    settings = TrackingSettings(blocklist=Blocklist.from_entries(["@ourco.example"]))
    client_mail = facts(mailbox=replace(ME, filter=F.ALL))
    assert decide(client_mail, settings).should_track
    from_colleague = facts(sender="bob@ourco.example", mailbox=replace(ME, filter=F.ALL))
    decision = decide(from_colleague, settings)
    assert decision.reason is R.BLOCKLISTED
    assert "bob@ourco.example" in decision.detail and "@ourco.example" in decision.detail


def test_a_blocklisted_recipient_blocks_and_subdomains_match() -> None:
    settings = TrackingSettings(blocklist=Blocklist.from_entries(["@rival.example"]))
    case = facts(cc=("spy@eu.mail.rival.example",), mailbox=replace(ME, filter=F.ALL))
    assert decide(case, settings).reason is R.BLOCKLISTED
    assert decide(facts(cc=("x@notrival.example",)), settings).reason is not R.BLOCKLISTED


def test_every_reason_has_a_sentence_and_tracking_reasons_are_the_accepting_ones() -> None:
    assert set(REASON_SENTENCES) == set(ReasonCode)
    assert all(r.sentence.endswith(".") for r in ReasonCode)
    assert {r for r in ReasonCode if r.tracks} == {
        R.MANUAL,
        R.ALREADY_TRACKED,
        R.FILTER_ALL,
        R.REPLY_TO_TRACKED,
        R.FROM_CRM_RECORD,
        R.FROM_EMAIL_ENABLED_RECORD,
    }


def test_reason_codes_are_stable() -> None:
    # Stored with every decision: renaming one breaks `crmsync explain` for old mail.
    assert [r.value for r in ReasonCode] == [
        "manual",
        "already_tracked",
        "filter_all",
        "reply_to_tracked",
        "from_crm_record",
        "from_email_enabled_record",
        "folder_not_tracked",
        "sent_items_off",
        "blocklisted",
        "bulk_mail",
        "auto_submitted",
        "no_crm_recipient",
        "filter_none",
        "not_a_reply",
        "sender_not_in_crm",
        "sender_not_lead_contact_account",
    ]


@pytest.mark.parametrize(
    ("types", "expected"),
    [
        ([], K.UNKNOWN),
        (["user"], K.EMAIL_ENABLED),
        (["queue"], K.EMAIL_ENABLED),
        (["opportunity_custom"], K.EMAIL_ENABLED),
        (["user", "contact"], K.LEAD_CONTACT_ACCOUNT),
        (["lead"], K.LEAD_CONTACT_ACCOUNT),
        (["account"], K.LEAD_CONTACT_ACCOUNT),
        (["equipment"], K.UNKNOWN),
    ],
)
def test_sender_kind(types, expected) -> None:
    assert sender_kind([Candidate(t, f"id-{i}") for i, t in enumerate(types)]) is expected


def test_sender_kind_follows_the_inactive_rules() -> None:
    inactive_contact = [Candidate("contact", "c1", active=False)]
    assert sender_kind(inactive_contact) is K.UNKNOWN
    with_option = PartyOptions(resolve_for_inactive=True)
    assert sender_kind(inactive_contact, with_option) is K.LEAD_CONTACT_ACCOUNT
    inactive_user = [Candidate("user", "u1", active=False)]
    assert sender_kind(inactive_user, with_option) is K.UNKNOWN


# --- the privacy-minimal check --------------------------------------------------------------

TOKENS = TokenFormat()
TRACKED_TOKEN = make_token(TOKENS, 7, 42)


@dataclass
class FakeLookup:
    """An in-memory implementation of our own IncomingLookup protocol."""

    records: dict[str, list[Candidate]] = field(default_factory=dict)
    tracked_ids: set[str] = field(default_factory=set)
    tracked_tokens: set[str] = field(default_factory=set)
    owners: list[CrmOwner] = field(default_factory=list)
    settings: TrackingSettings = field(default_factory=TrackingSettings)
    tokens: TokenFormat | None = TOKENS
    calls: list[tuple[str, object]] = field(default_factory=list)

    def candidates(self, address: str) -> Sequence[Candidate]:
        self.calls.append(("candidates", address))
        return self.records.get(address, [])

    def is_tracked_message(self, message_id: str) -> bool:
        self.calls.append(("is_tracked_message", message_id))
        return message_id in self.tracked_ids

    def is_tracked_token(self, token: str) -> bool:
        self.calls.append(("is_tracked_token", token))
        return token in self.tracked_tokens

    def mailbox_owners(self, addresses: Collection[str]) -> Sequence[CrmOwner]:
        self.calls.append(("mailbox_owners", tuple(addresses)))
        return [o for o in self.owners if o.address in addresses]

    def tracking_settings(self) -> TrackingSettings:
        return self.settings

    def party_options(self) -> PartyOptions:
        return PartyOptions()

    def token_format(self) -> TokenFormat | None:
        return self.tokens


def _lookup(**changes: object) -> FakeLookup:
    lookup = FakeLookup(
        records={"ann@client.example": [Candidate("contact", "c-ann")]},
        tracked_tokens={TRACKED_TOKEN.text},
        owners=[
            CrmOwner("user-me", OwnerKind.USER, F.RESPONSES, "me@ourco.example"),
            CrmOwner("q-sales", OwnerKind.QUEUE, F.LEADS_CONTACTS_ACCOUNTS, "sales@ourco.example"),
        ],
    )
    for key, value in changes.items():
        setattr(lookup, key, value)
    return lookup


def test_check_incoming_takes_only_four_message_fields_and_a_lookup() -> None:
    params = list(inspect.signature(check_incoming).parameters)
    assert params == ["message_id", "subject", "sender", "recipients", "lookup"]
    _typed: IncomingLookup = FakeLookup()  # the fake satisfies the protocol (checked by mypy)


def test_check_incoming_recognizes_a_reply_by_its_token() -> None:
    lookup = _lookup()
    subject = f"RE: AW: your quote {TRACKED_TOKEN.text}"
    decision = check_incoming(
        "<new@client.example>",
        subject,
        "Ann <ann@client.example>",
        ["Me <me@ourco.example>"],
        lookup,
    )
    assert decision.should_track and decision.reason is R.REPLY_TO_TRACKED
    assert decision.accepted_by == "user-me"


def test_check_incoming_never_hands_the_subject_to_the_lookup() -> None:
    lookup = _lookup()
    subject = f"Secret merger plans {TRACKED_TOKEN.text}"
    check_incoming(
        "<new@client.example>", subject, "ann@client.example", ["me@ourco.example"], lookup
    )
    passed = " ".join(str(arg) for _, arg in lookup.calls)
    assert "Secret" not in passed and "merger" not in passed
    assert ("is_tracked_token", TRACKED_TOKEN.text) in lookup.calls


def test_check_incoming_without_a_token_is_not_a_reply() -> None:
    decision = check_incoming(None, "Hello", "ann@client.example", ["me@ourco.example"], _lookup())
    assert decision.reason is R.NOT_A_REPLY and not decision.should_track


def test_check_incoming_with_tokens_off_ignores_them() -> None:
    decision = check_incoming(
        None,
        f"Re: {TRACKED_TOKEN.text}",
        "ann@client.example",
        ["me@ourco.example"],
        _lookup(tokens=None),
    )
    assert decision.reason is R.NOT_A_REPLY


def test_check_incoming_another_recipient_accepts() -> None:
    decision = check_incoming(
        None,
        "Hello",
        "ann@client.example",
        ["me@ourco.example", "Sales <sales@ourco.example>"],
        _lookup(),
    )
    assert decision.should_track and decision.reason is R.FROM_CRM_RECORD
    assert decision.accepted_by == "q-sales"


def test_check_incoming_asks_recipients_in_header_order() -> None:
    owners = [
        CrmOwner("u-b", OwnerKind.USER, F.ALL, "b@ourco.example"),
        CrmOwner("u-a", OwnerKind.USER, F.ALL, "a@ourco.example"),
    ]
    decision = check_incoming(
        None,
        "Hi",
        "ann@client.example",
        ["A@OurCo.example", "b@ourco.example"],
        _lookup(owners=owners),
    )
    assert decision.accepted_by == "u-a"


def test_check_incoming_unknown_sender() -> None:
    decision = check_incoming(
        None, "Hi", "stranger@else.example", ["sales@ourco.example"], _lookup()
    )
    assert decision.reason is R.SENDER_NOT_IN_CRM


def test_check_incoming_already_tracked_message_id() -> None:
    lookup = _lookup(tracked_ids={"Abc@client.example"})
    decision = check_incoming(
        "<Abc@CLIENT.example>", "Hi", "x@y.example", ["me@ourco.example"], lookup
    )
    assert decision.reason is R.ALREADY_TRACKED


def test_check_incoming_no_crm_recipient() -> None:
    decision = check_incoming(None, "Hi", "ann@client.example", ["friend@else.example"], _lookup())
    assert decision.reason is R.NO_CRM_RECIPIENT


def test_check_incoming_bounces_and_blocklist() -> None:
    bounce = check_incoming(
        None, "Undeliverable", "MAILER-DAEMON@mx.example", ["me@ourco.example"], _lookup()
    )
    assert bounce.reason is R.AUTO_SUBMITTED
    blocked = TrackingSettings(blocklist=Blocklist.from_entries(["@client.example"]))
    decision = check_incoming(
        None, "Hi", "ann@client.example", ["sales@ourco.example"], _lookup(settings=blocked)
    )
    assert decision.reason is R.BLOCKLISTED


def test_the_administrators_page_lists_every_reason_with_its_sentence() -> None:
    page = Path(__file__).parents[2] / "docs" / "tracking-rules.md"
    text = page.read_text(encoding="utf-8")
    for reason in ReasonCode:
        row = f"| `{reason.value}` | {'yes' if reason.tracks else 'no'} | {reason.sentence} |"
        assert row in text, f"docs/tracking-rules.md lacks or misstates {reason.value}"
