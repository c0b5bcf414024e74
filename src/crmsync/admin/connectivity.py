"""Test & Enable: check a mailbox's incoming, outgoing and ACT connectivity, record the results.

    report = run_mailbox_test(engine, box, mailbox_id, actor=actor, enable=True)

Each configured channel is checked on its own, with its own timeout, in parallel:

- incoming: IMAP login and ``EXAMINE INBOX`` (read-only), through ``crmsync.mail.imap``;
- outgoing: SMTP EHLO, TLS, AUTH when offered, NOOP, RSET, QUIT; never a message
  (``crmsync.mail.smtp.check_smtp``);
- ACT (appointments, contacts, tasks): one ``PROPFIND`` on each configured CalDAV/CardDAV URL
  (``crmsync.dav.probe_collection``).

A channel without a URL is "not configured" and its status goes back to ``not_run``. The others
get ``success`` or ``failure`` on the mailbox, with ``tested_at``; the first failure's error code
and message go to ``last_error_*`` (a fully successful test clears them). The audit event
``mailbox.tested`` holds the per-channel results. With ``enable`` the mailbox is enabled (through
``enable_mailbox``, which checks approval) only when every configured channel succeeded.

No database transaction is open while the servers are contacted: the mailbox is read in one,
the results are written in another, and enabling happens in a third, so a refused enable never
loses the recorded results.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from crmsync.admin.mailboxes import EnableResult, credential_binding, enable_mailbox
from crmsync.crm import audit
from crmsync.crm.base import StrEnum, utcnow
from crmsync.crm.mailboxes import Mailbox, TestStatus
from crmsync.dav.probe import DavProbe, probe_collection
from crmsync.errors import CrmsyncError, InvalidInput, NotFound
from crmsync.mail.imap import ImapEndpoint, ImapSession, Security
from crmsync.mail.smtp import check_smtp
from crmsync.secrets import Secret, SecretBox

DEFAULT_TIMEOUT = 15.0
"""Seconds each network step of a check may wait."""


class Channel(StrEnum):
    INCOMING = "incoming"
    OUTGOING = "outgoing"
    ACT = "act"


class Outcome(StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"
    NOT_CONFIGURED = "not configured"


STATUS_FIELD = {
    Channel.INCOMING: "incoming_status",
    Channel.OUTGOING: "outgoing_status",
    Channel.ACT: "act_status",
}


@dataclass
class ChannelResult:
    channel: Channel
    outcome: Outcome
    checked: str
    """What was checked (or, on failure, what was attempted)."""
    error_code: str | None = None
    error: str | None = None
    """What went wrong and what to do; never the password."""
    transient: bool | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.outcome is Outcome.FAILURE

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["channel"] = self.channel.value
        out["result"] = out.pop("outcome").value
        return out


@dataclass
class ConnectivityReport:
    mailbox_id: uuid.UUID
    mailbox: str
    """The mailbox's email address."""
    tested_at: datetime
    results: list[ChannelResult]
    enable_requested: bool = False
    enable: EnableResult | None = None
    """Set when the mailbox was enabled (or already was)."""
    enable_refused: str | None = None
    """Why --enable did not enable it (a failed channel, or enable_mailbox's own refusal)."""

    @property
    def failed_channels(self) -> list[Channel]:
        return [r.channel for r in self.results if r.failed]

    @property
    def all_succeeded(self) -> bool:
        """Every configured channel succeeded (and at least one is configured)."""
        configured = [r for r in self.results if r.outcome is not Outcome.NOT_CONFIGURED]
        return bool(configured) and not any(r.failed for r in configured)

    def as_dict(self) -> dict[str, Any]:
        return {
            "mailbox_id": str(self.mailbox_id),
            "mailbox": self.mailbox,
            "tested_at": self.tested_at.isoformat(),
            "channels": [r.as_dict() for r in self.results],
            "all_succeeded": self.all_succeeded,
            "failed_channels": [c.value for c in self.failed_channels],
            "enable": {
                "requested": self.enable_requested,
                "enabled": self.enable is not None,
                "changed": bool(self.enable and self.enable.changed),
                "process_email_received_after": (
                    self.enable.process_after.isoformat()
                    if self.enable and self.enable.process_after
                    else None
                ),
                "refused": self.enable_refused,
            },
        }


@dataclass(frozen=True)
class _Targets:
    """What the checks need, read from the mailbox; the password stays a Secret."""

    address: str
    username: str
    password: Secret
    imap_url: str | None
    smtp_url: str | None
    dav_urls: tuple[tuple[str, str], ...]
    """(label, url) for CalDAV and CardDAV, the configured ones only."""


# ---------------------------------------------------------------------- the service
def run_mailbox_test(
    engine: Engine,
    box: SecretBox,
    mailbox_id: uuid.UUID,
    *,
    actor: audit.Actor,
    enable: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
) -> ConnectivityReport:
    """Test every configured channel, record the results (and audit), enable if asked and all
    succeeded. The caller has checked the actor's approve_mailbox privilege."""
    with Session(engine) as session, session.begin():
        targets = load_targets(session, box, _get(session, mailbox_id))
    results = check_all(targets, timeout=timeout)
    tested_at = utcnow()
    with Session(engine) as session, session.begin():
        record_results(
            session, _get(session, mailbox_id), results, actor=actor, tested_at=tested_at
        )
    report = ConnectivityReport(
        mailbox_id, targets.address, tested_at, results, enable_requested=enable
    )
    if enable:
        if not report.all_succeeded:
            report.enable_refused = _refusal(report)
        else:
            try:
                with Session(engine) as session, session.begin():
                    report.enable = enable_mailbox(session, _get(session, mailbox_id), actor=actor)
            except InvalidInput as exc:  # not approved: the results above stay recorded
                report.enable_refused = str(exc)
    return report


def _get(session: Session, mailbox_id: uuid.UUID) -> Mailbox:
    mailbox = session.get(Mailbox, mailbox_id)
    if mailbox is None:
        raise NotFound(f"no mailbox {mailbox_id}; see: crmsync mailbox list")
    return mailbox


def _refusal(report: ConnectivityReport) -> str:
    failed = report.failed_channels
    if not failed:
        return (
            f"mailbox {report.mailbox} has no server configured to test, so it was not enabled; "
            "configure one with: crmsync mailbox add --update"
        )
    return (
        f"mailbox {report.mailbox} was not enabled: {failed_phrase(failed)}; fix what the "
        f"table says, then run: crmsync mailbox test {report.mailbox} --enable"
    )


def failed_phrase(failed: list[Channel]) -> str:
    """``the outgoing test failed``, ``the incoming, outgoing and act tests failed``."""
    names = [c.value for c in failed]
    if len(names) == 1:
        return f"the {names[0]} test failed"
    return f"the {', '.join(names[:-1])} and {names[-1]} tests failed"


def load_targets(session: Session, box: SecretBox, mailbox: Mailbox) -> _Targets:
    if mailbox.credential is None:
        raise InvalidInput(
            f"mailbox {mailbox.email_address} has no stored password; set it with: "
            "crmsync mailbox add --update"
        )
    password = box.decrypt(mailbox.credential, bound_to=credential_binding(mailbox.id))
    dav: tuple[tuple[str, str], ...] = tuple(
        (label, url)
        for label, url in (("CalDAV", mailbox.caldav_url), ("CardDAV", mailbox.carddav_url))
        if url
    )
    if len(dav) == 2 and dav[0][1] == dav[1][1]:  # one server for both: one probe
        dav = (("CalDAV/CardDAV", dav[0][1]),)
    return _Targets(
        address=mailbox.email_address,
        username=mailbox.username or mailbox.email_address,
        password=password,
        imap_url=mailbox.imap_url or None,
        smtp_url=mailbox.smtp_url or None,
        dav_urls=dav,
    )


def check_all(targets: _Targets, *, timeout: float = DEFAULT_TIMEOUT) -> list[ChannelResult]:
    """The three channels, each on its own thread (one slow server does not slow the others)."""
    checks: list[Callable[[], ChannelResult]] = [
        lambda: check_incoming(targets, timeout=timeout),
        lambda: check_outgoing(targets, timeout=timeout),
        lambda: check_act(targets, timeout=timeout),
    ]
    with ThreadPoolExecutor(max_workers=len(checks), thread_name_prefix="mailbox-test") as pool:
        futures = [pool.submit(check) for check in checks]
        return [f.result() for f in futures]


def check_incoming(targets: _Targets, *, timeout: float) -> ChannelResult:
    if not targets.imap_url:
        return _not_configured(Channel.INCOMING, "no incoming (IMAP) server configured")
    url, user = targets.imap_url, targets.username

    def run() -> ChannelResult:
        endpoint = ImapEndpoint.from_url(url)
        with ImapSession(endpoint, user, targets.password, timeout=timeout) as imap:
            state = imap.select("INBOX", readonly=True)
        tls = "TLS" if endpoint.security is Security.IMPLICIT_TLS else "STARTTLS or loopback"
        return ChannelResult(
            Channel.INCOMING,
            Outcome.SUCCESS,
            f"IMAP login as {user} at {endpoint.url} ({tls}); INBOX opened read-only "
            f"({state.exists} messages)",
        )

    return _guarded(Channel.INCOMING, f"IMAP login as {user} at {url}, INBOX", run, targets)


def check_outgoing(targets: _Targets, *, timeout: float) -> ChannelResult:
    if not targets.smtp_url:
        return _not_configured(Channel.OUTGOING, "no outgoing (SMTP) server configured")
    url, user = targets.smtp_url, targets.username

    def run() -> ChannelResult:
        check = check_smtp(url, user, targets.password, timeout=timeout)
        transport = {
            "tls": "TLS",
            "starttls": "STARTTLS",
            "plaintext_loopback": "clear text over loopback",
        }[check.transport]
        login = f"AUTH as {user}" if check.authenticated else "no AUTH offered"
        return ChannelResult(
            Channel.OUTGOING,
            Outcome.SUCCESS,
            f"SMTP {check.endpoint.scheme}://{check.endpoint.display}: EHLO, {transport}, "
            f"{login}, NOOP, RSET (no mail sent)",
            notes=list(check.notes),
        )

    return _guarded(
        Channel.OUTGOING,
        f"SMTP {url}: EHLO, STARTTLS/TLS, AUTH as {user} (no mail sent)",
        run,
        targets,
    )


def check_act(targets: _Targets, *, timeout: float) -> ChannelResult:
    if not targets.dav_urls:
        return _not_configured(Channel.ACT, "no CalDAV/CardDAV URL configured")
    user = targets.username
    attempted = "; ".join(f"{label} PROPFIND {url} as {user}" for label, url in targets.dav_urls)

    def run() -> ChannelResult:
        done: list[str] = []
        for label, url in targets.dav_urls:
            probe: DavProbe = probe_collection(url, user, targets.password, timeout=timeout)
            done.append(f"{label} PROPFIND {probe.url} as {user}: {probe.status} Multi-Status")
        return ChannelResult(Channel.ACT, Outcome.SUCCESS, "; ".join(done))

    return _guarded(Channel.ACT, attempted, run, targets)


def _not_configured(channel: Channel, why: str) -> ChannelResult:
    return ChannelResult(channel, Outcome.NOT_CONFIGURED, why)


def _guarded(
    channel: Channel, attempted: str, run: Callable[[], ChannelResult], targets: _Targets
) -> ChannelResult:
    """RUN's result, or a failure result: a check never raises (one channel cannot hide the
    others' results)."""
    try:
        return run()
    except CrmsyncError as exc:  # ImapError, SmtpError, DavError, InvalidInput (a bad URL)
        return ChannelResult(
            channel,
            Outcome.FAILURE,
            attempted,
            error_code=type(exc).__name__,
            error=_scrub(str(exc), targets.password),
            transient=bool(getattr(exc, "transient", False)),
        )
    except Exception as exc:  # a bug: shown as such, still recorded
        return ChannelResult(
            channel,
            Outcome.FAILURE,
            attempted,
            error_code="InternalError",
            error=_scrub(
                f"internal error ({type(exc).__name__}): {exc} — please report it",
                targets.password,
            ),
            transient=True,
        )


def _scrub(text: str, password: Secret) -> str:
    """A second line of defence: the adapters already keep the password out of messages."""
    secret = password.reveal()
    return text.replace(secret, "***") if len(secret) >= 4 else text


# ---------------------------------------------------------------------- recording
def record_results(
    session: Session,
    mailbox: Mailbox,
    results: list[ChannelResult],
    *,
    actor: audit.Actor,
    tested_at: datetime,
) -> None:
    """The statuses, tested_at and last_error_* on the mailbox, and the audit event."""
    for result in results:
        status = {
            Outcome.SUCCESS: TestStatus.SUCCESS,
            Outcome.FAILURE: TestStatus.FAILURE,
            Outcome.NOT_CONFIGURED: TestStatus.NOT_RUN,
        }[result.outcome]
        setattr(mailbox, STATUS_FIELD[result.channel], status)
    mailbox.tested_at = tested_at
    failures = [r for r in results if r.failed]
    if failures:
        first = failures[0]
        same = mailbox.last_error_code == first.error_code
        mailbox.last_error_count = (mailbox.last_error_count if same else 0) + 1
        mailbox.last_error_code = first.error_code
        mailbox.last_error_message = f"{first.channel.value} test: {first.error}"
        mailbox.last_error_at = tested_at
    else:
        mailbox.last_error_code = None
        mailbox.last_error_message = None
        mailbox.last_error_count = 0
    session.flush()
    audit.record(
        session,
        actor,
        "mailbox.tested",
        target_type="mailbox",
        target_id=mailbox.id,
        target_name=mailbox.email_address,
        results={
            r.channel.value: {
                "result": r.outcome.value,
                "error_code": r.error_code,
                "error": r.error,
                "transient": r.transient,
            }
            for r in results
        },
    )
