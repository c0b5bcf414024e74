"""One logged-in IMAP connection with a small typed surface over imapclient.

    plan = fetch_plan(level)
    with ImapSession(ImapEndpoint.from_url(url), "anna", secret, timeout=30) as imap:
        state = imap.select("INBOX")                     # FolderState, read-only (EXAMINE)
        new = imap.search_uids_since(cursor_uidnext - 1)
        for batch in imap.iter_header_batches(new, plan):  # headers only, 500 UIDs a command
            ...
        raw = imap.fetch_message(uid, plan)              # PrivacyViolation unless plan allows

A session is used by one thread at a time (imapclient is not thread-safe); run many sessions in a
thread pool for many mailboxes. Every failure leaves as an ``ImapError`` (see ``errors``); once a
connection is lost or timed out, the session refuses further commands and ``close`` only drops
the socket, so a dead server cannot stall the caller twice.

Privacy: the FETCH items are built here, from the ``FetchPlan``, and checked against a list of
items that carry subject or body text before any command is sent. Whole messages are fetched only
by ``fetch_message``, which refuses plans without ``full_message`` before touching the network.
"""

from __future__ import annotations

import contextlib
import functools
import imaplib
import re
import socket
import ssl
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from types import TracebackType
from typing import Any, NoReturn

import imapclient
from imapclient.exceptions import LoginError, ProtocolError
from imapclient.response_parser import parse_fetch_response

from crmsync.core.privacy import FetchPlan
from crmsync.mail.imap._client import ConnectingIMAPClient, SourceAddress
from crmsync.mail.imap.endpoint import ImapEndpoint, Security
from crmsync.mail.imap.errors import (
    AuthenticationFailed,
    CommandFailed,
    ConnectionLost,
    ConnectionTimedOut,
    ImapError,
    InsecureTransportRefused,
    MailboxNotFound,
    MessageNotFound,
    MissingCapability,
    PrivacyViolation,
    ServerUnavailable,
    TlsFailure,
)
from crmsync.mail.imap.fetch import (
    FolderState,
    HeaderFetch,
    header_fetch_from_response,
    header_fetch_items,
    header_fields_for,
    int_or_none,
)
from crmsync.secrets import Secret
from crmsync.transport import TransportDecision, decide_transport

DEFAULT_TIMEOUT = 30.0
DEFAULT_BATCH_SIZE = 500
"""UIDs per FETCH: ~4 KB of command, ~0.5 MB of header response; no ``1:*`` ever."""
LOGOUT_TIMEOUT = 5.0
"""LOGOUT is a courtesy: a server that does not answer it quickly is simply disconnected."""

# Response codes (RFC 5530) that mean "try again later" when a command is refused.
TRANSIENT_CODES = frozenset({"UNAVAILABLE", "INUSE", "LIMIT", "SERVERBUG", "EXPUNGEISSUED"})
_RESPONSE_CODE = re.compile(r"\[([A-Z][A-Z0-9-]*)")
_CHANGE_RESPONSES = ("EXISTS", "EXPUNGE", "VANISHED", "FETCH", "RECENT")
_CHANGE_KINDS = frozenset(k.encode() for k in _CHANGE_RESPONSES)
_KEYWORD = re.compile(r"\$?[A-Za-z0-9_.-]{1,64}")
_SYSTEM_FLAGS = frozenset({"\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft"})
_APPENDUID = re.compile(r"\[APPENDUID ([0-9]+) ([0-9]+)\]", re.IGNORECASE)
_SEARCHABLE_ID = re.compile(r"[!-;=?-~]{1,900}")
"""A message id (without its brackets) that can be sent in a SEARCH: printable ASCII."""
_BRACKETED = re.compile(r"<([^<>]*)>")


@functools.cache
def _default_tls_context() -> ssl.SSLContext:
    """One verifying context for every session: loading the CA store per session cost ~17 ms
    of CPU, a third of a no-change sync (bench/scheduler_bench.py)."""
    return ssl.create_default_context()


class ImapSession:
    """A context manager: connects, secures (TLS/STARTTLS) and logs in on enter."""

    def __init__(
        self,
        endpoint: ImapEndpoint | str,
        username: str,
        password: Secret,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float | None = None,
        source_address: SourceAddress | None = None,
        ssl_context: ssl.SSLContext | None = None,
        enable_condstore: bool = True,
    ) -> None:
        if not isinstance(password, Secret):
            raise TypeError("password must be a crmsync.secrets.Secret")
        self.endpoint = (
            endpoint if isinstance(endpoint, ImapEndpoint) else ImapEndpoint.from_url(endpoint)
        )
        self.username = username
        self._password = password
        self.timeout = timeout
        self.connect_timeout = timeout if connect_timeout is None else connect_timeout
        self.source_address = source_address
        # verifying by default (certificate chain and host name); tests pass their own CA
        self._ssl_context = ssl_context or _default_tls_context()
        self._client: ConnectingIMAPClient | None = None
        self._broken = False
        self._logged_in = False
        self._capabilities: frozenset[str] = frozenset()
        self._condstore = False
        # False keeps the session free of mod-sequences (tests of the UID-diff sync path, and
        # servers whose CONDSTORE is known to be broken)
        self._want_condstore = enable_condstore
        self._qresync = False
        self.selected: FolderState | None = None
        self.permanent_flags: frozenset[str] = frozenset()
        """PERMANENTFLAGS of the selected folder (``\\*``: new keywords may be created)."""
        self.selected_writable = False

    def __repr__(self) -> str:
        return f"ImapSession({self.endpoint.url!r}, {self.username!r})"

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> ImapSession:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def open(self) -> None:
        """Connect, secure the connection, log in and enable CONDSTORE when offered.

        The adapter does not log: the sync service logs with its own context (mailbox, job),
        and nothing here can then leak message content into logs.
        """
        if self._client is not None:
            return
        self._logged_in = False
        with self._translate("connecting"):
            client = ConnectingIMAPClient(
                self.endpoint.host,
                self.endpoint.port,
                implicit_tls=self.endpoint.security is Security.IMPLICIT_TLS,
                ssl_context=self._ssl_context,
                connect_timeout=self.connect_timeout,
                read_timeout=self.timeout,
                source_address=self.source_address,
            )
        self._client = client
        self._broken = False
        try:
            self._secure(client)
            self._login(client)
            with self._translate("reading the server's capabilities"):
                self._capabilities = frozenset(
                    c.decode("ascii", "replace").upper() for c in client.capabilities()
                )
                self._qresync = False
                if self._want_condstore and self.has("CONDSTORE") and self.has("ENABLE"):
                    enabled = client.enable("CONDSTORE")
                    self._condstore = b"CONDSTORE" in {e.upper() for e in enabled}
        except BaseException:
            self._drop()
            raise

    def _secure(self, client: ConnectingIMAPClient) -> None:
        if self.endpoint.security is Security.IMPLICIT_TLS:
            return
        with self._translate("negotiating STARTTLS"):
            offers = b"STARTTLS" in client.capabilities()
            decision = decide_transport(offers_starttls=offers, peer_address=client.peer_address())
            if decision is TransportDecision.STARTTLS:
                client.starttls(self._ssl_context)
                return
        if decision is TransportDecision.REFUSE:
            raise InsecureTransportRefused(
                f"the IMAP server {self.endpoint.display} does not offer STARTTLS, and crmsync "
                "sends passwords in clear text only to loopback addresses: use "
                f"imaps://{self.endpoint.host} (port 993) or enable STARTTLS on the server"
            )

    def _login(self, client: ConnectingIMAPClient) -> None:
        with self._translate("logging in"):
            try:
                client.login(self.username, self._password.reveal())
            except LoginError as exc:
                # "from None": nothing of the attempt is chained onto what callers see
                raise self._login_error(exc) from None
        self._logged_in = True

    def _login_error(self, exc: LoginError) -> ImapError:
        said = self._server_text(exc)
        code = response_code(said)
        where = f"the IMAP server {self.endpoint.display}"
        if code in TRANSIENT_CODES:
            return ServerUnavailable(
                f"{where} could not check the login of {self.username} right now "
                f"(server said: {said}); crmsync will retry"
            )
        if code == "PRIVACYREQUIRED":
            return TlsFailure(
                f"{where} accepts the login of {self.username} only over TLS "
                f"(server said: {said}): use imaps://{self.endpoint.host}"
            )
        return AuthenticationFailed(
            f"{where} refused the login of {self.username}: check the mailbox password "
            f"(crmsync mailbox add --update) (server said: {said})"
        )

    def close(self) -> None:
        """Log out politely if the connection is healthy; never raises, never waits long."""
        client, self._client = self._client, None
        self.selected = None
        if client is None:
            return
        if not self._broken:
            with contextlib.suppress(Exception):
                client.set_socket_timeout(min(self.timeout, LOGOUT_TIMEOUT))
                client.logout()
                return
        with contextlib.suppress(Exception):
            client.shutdown()

    def _drop(self) -> None:
        self._broken = True
        self.close()

    # ------------------------------------------------------------------ capabilities
    @property
    def capabilities(self) -> frozenset[str]:
        """Upper-cased capability names after login (``QRESYNC``, ``AUTH=PLAIN``...)."""
        return self._capabilities

    @property
    def condstore_enabled(self) -> bool:
        return self._condstore

    def has(self, capability: str) -> bool:
        return capability.upper() in self._capabilities

    def require(self, capability: str, needed_for: str) -> None:
        """Raise ``MissingCapability`` unless the server has CAPABILITY."""
        if not self.has(capability):
            raise MissingCapability(
                f"the IMAP server {self.endpoint.display} does not support {capability.upper()}, "
                f"which crmsync needs to {needed_for}",
                capability=capability.upper(),
            )

    # ------------------------------------------------------------------ folders
    def select(self, folder: str, *, readonly: bool = True) -> FolderState:
        """Open FOLDER (EXAMINE when read-only) and return its cursor values."""
        client = self._live()
        self.selected = None
        with self._translate(f"opening the folder {folder!r}"):
            try:
                response = client.select_folder(folder, readonly=readonly)
            except imaplib.IMAP4.abort:
                raise
            except imaplib.IMAP4.error as exc:
                self._raise_if_missing(client, folder, exc)
                raise
            state = self._folder_state(client, folder, response)
            # the selection's own EXISTS/RECENT are its state, not changes since (noop_quiet)
            for key in _CHANGE_RESPONSES:
                client._imap.untagged_responses.pop(key, None)
        self.selected = state
        self.permanent_flags = frozenset(
            f.decode("utf-8", "replace") if isinstance(f, bytes) else str(f)
            for f in response.get(b"PERMANENTFLAGS", ())
        )
        self.selected_writable = not readonly
        return state

    def status(self, folder: str, *, modseq: bool | None = None) -> FolderState:
        """The cursor values of FOLDER without selecting it (cheap poll: one STATUS command).

        MODSEQ (default: when the server has CONDSTORE and the session did not opt out) asks for
        HIGHESTMODSEQ too; asking for it enables CONDSTORE implicitly (RFC 7162 3.1).
        On the folder this session has selected, Dovecot answers from the session's own view,
        which is stale ("[CLIENTBUG]"): ``unselect()`` first for fresh values.
        """
        client = self._live()
        what = ["MESSAGES", "UIDNEXT", "UIDVALIDITY"]
        if modseq is None:
            modseq = self._want_condstore and self.has("CONDSTORE")
        if modseq:
            what.append("HIGHESTMODSEQ")
        with self._translate(f"asking the status of the folder {folder!r}"):
            try:
                response = client.folder_status(folder, what)
            except imaplib.IMAP4.abort:
                raise
            except imaplib.IMAP4.error as exc:
                self._raise_if_missing(client, folder, exc)
                raise
        return FolderState(
            folder=folder,
            uidvalidity=self._required_int(response, b"UIDVALIDITY", folder),
            uidnext=self._required_int(response, b"UIDNEXT", folder),
            highestmodseq=int_or_none(response.get(b"HIGHESTMODSEQ")),
            exists=int_or_none(response.get(b"MESSAGES")) or 0,
        )

    def _raise_if_missing(
        self, client: ConnectingIMAPClient, folder: str, exc: imaplib.IMAP4.error
    ) -> None:
        """Dovecot answers a missing folder with a bare NO (no [NONEXISTENT]): ask LIST."""
        said = self._server_text(exc)
        missing = response_code(said) == "NONEXISTENT"
        if not missing:
            try:
                listed = client.list_folders("", folder)
            except imaplib.IMAP4.abort:
                raise
            except imaplib.IMAP4.error:
                listed = None  # cannot tell: report the original failure
            missing = listed is not None and not any(
                _same_folder(name, folder) and b"\\NONEXISTENT" not in {f.upper() for f in flags}
                for flags, _delimiter, name in listed
            )
        if missing:
            raise MailboxNotFound(
                f"the folder {folder!r} does not exist in the mailbox of {self.username} on "
                f"{self.endpoint.display}: check the folder name in the mailbox settings "
                f"(server said: {said})"
            ) from None

    def _status_int(self, client: ConnectingIMAPClient, folder: str, item: str) -> int:
        # RFC 3501 requires UIDNEXT in the SELECT answer; a few servers leave it out
        response = client.folder_status(folder, [item])
        return self._required_int(response, item.encode(), folder)

    def _folder_state(
        self, client: ConnectingIMAPClient, folder: str, response: dict
    ) -> FolderState:
        """A SELECT/EXAMINE response as a FolderState (asking STATUS for a missing UIDNEXT)."""
        return FolderState(
            folder=folder,
            uidvalidity=self._required_int(response, b"UIDVALIDITY", folder),
            uidnext=int_or_none(response.get(b"UIDNEXT"))
            or self._status_int(client, folder, "UIDNEXT"),
            highestmodseq=int_or_none(response.get(b"HIGHESTMODSEQ")),
            exists=int_or_none(response.get(b"EXISTS")) or 0,
        )

    def _required_int(self, response: dict[bytes, Any], key: bytes, folder: str) -> int:
        value = int_or_none(response.get(key))
        if value is None:
            raise CommandFailed(
                f"the IMAP server {self.endpoint.display} did not report {key.decode()} for the "
                f"folder {folder!r}; crmsync cannot track changes without it",
                transient=False,
            )
        return value

    # ------------------------------------------------------------------ incremental sync
    # The building blocks of ``delta.changes_since``: each sends one command (enable_qresync
    # says how many it sent), so the caller can count round trips.
    @property
    def qresync_enabled(self) -> bool:
        return self._qresync

    def enable_qresync(self) -> int:
        """``ENABLE QRESYNC`` once per connection; returns the number of commands sent (0-2).

        ENABLE is legal only with no folder selected (RFC 5161), so a selected folder is
        unselected first (without UNSELECT support QRESYNC stays off). Check
        ``qresync_enabled`` afterwards: the server may have refused.
        """
        if self._qresync or not (self.has("QRESYNC") and self.has("ENABLE")):
            return 0
        client = self._live()
        sent = 0
        if client._imap.state == "SELECTED":
            if not self.unselect():
                return 0  # (CLOSE could expunge a read-write folder: rather no QRESYNC)
            sent += 1
        with self._translate("enabling QRESYNC"):
            sent += 1
            enabled = {e.upper() for e in client.enable("QRESYNC")}
        self._qresync = b"QRESYNC" in enabled
        # QRESYNC implies CONDSTORE (RFC 7162 3.2.3)
        self._condstore = self._condstore or self._qresync
        return sent

    def noop_quiet(self, *, flags: bool = True) -> bool:
        """``NOOP`` on the selected folder: True when the server reports no change since the
        folder was selected (no EXISTS, EXPUNGE, VANISHED, FETCH or new HIGHESTMODSEQ, now or
        left over from earlier commands).

        Holding a folder selected and asking NOOP costs the same at 1k and 100k messages,
        while STATUS and EXAMINE make Dovecot map the folder's whole index (~4.5 ms at 100k).
        After a False answer the session's view is stale: select the folder again. FLAGS False
        ignores flag changes (FETCH), for callers that cannot use them anyway (UID diff).
        """
        client = self._live_selected()
        pending = client._imap.untagged_responses
        # changes reported while other commands ran, which NOOP would not return again
        counted = (
            _CHANGE_RESPONSES if flags else tuple(k for k in _CHANGE_RESPONSES if k != "FETCH")
        )
        leftover = any(pending.get(key) for key in counted)
        for key in _CHANGE_RESPONSES:
            pending.pop(key, None)
        with self._translate("checking the folder for changes"):
            _text, responses = client.noop()
        if leftover:
            return False
        for response in responses:
            # "* 4 EXISTS" parses as (4, b'EXISTS'), "* VANISHED 5,7" as (b'VANISHED', b'5,7')
            items = response[:2] if isinstance(response, tuple) else (response,)
            kinds = {i.upper() for i in items if isinstance(i, bytes)} & _CHANGE_KINDS
            if kinds and (flags or kinds != {b"FETCH"}):
                return False
        return True

    def unselect(self) -> bool:
        """``UNSELECT`` (one command): leave the folder without expunging anything.

        False, with nothing sent, when no folder is selected or the server lacks UNSELECT.
        """
        client = self._live()
        if client._imap.state != "SELECTED" or not self.has("UNSELECT"):
            return False
        with self._translate("leaving the folder"):
            self.selected = None
            client.unselect_folder()
        return True

    def select_qresync(
        self, folder: str, *, uidvalidity: int, modseq: int, known_uids: str | None = None
    ) -> QresyncSelect:
        """``EXAMINE folder (QRESYNC (uidvalidity modseq [known_uids]))``: one command.

        imapclient cannot send SELECT parameters, so the command goes through its raw command
        path and the untagged answers (``VANISHED (EARLIER)``, ``FETCH``, the ``OK [...]`` codes)
        are read from imaplib's buffer, which is cleared first so only this command's answers
        count. When UIDVALIDITY no longer matches, the server ignores the QRESYNC parameter and
        the answer is a plain EXAMINE (no VANISHED, no FETCH): the caller compares UIDVALIDITY.
        """
        if not self._qresync:
            raise RuntimeError("QRESYNC is not enabled: call enable_qresync() first")
        if uidvalidity <= 0 or modseq <= 0:
            raise ValueError("uidvalidity and modseq must be positive")
        if known_uids is not None and not re.fullmatch(r"[0-9:,]+", known_uids):
            raise ValueError(f"not a UID set: {known_uids!r}")
        client = self._live()
        imap = client._imap
        self.selected = None
        param = f"{uidvalidity} {modseq}" + (f" {known_uids}" if known_uids else "")
        with self._translate(f"opening the folder {folder!r}"):
            imap.untagged_responses.clear()
            try:
                typ, data = client._raw_command(
                    b"EXAMINE",
                    [client._normalise_folder(folder), f"(QRESYNC ({param}))".encode("ascii")],
                    uid=False,
                )
                if typ != "OK":
                    said = b" ".join(d for d in data if isinstance(d, bytes)).decode(
                        "utf-8", "replace"
                    )
                    raise imaplib.IMAP4.error(f"EXAMINE failed: {said}")
            except imaplib.IMAP4.abort:
                raise
            except imaplib.IMAP4.error as exc:
                imap.state = "AUTH"  # a failed SELECT/EXAMINE leaves no folder selected
                self._raise_if_missing(client, folder, exc)
                raise
            untagged = dict(imap.untagged_responses)
            imap.untagged_responses.clear()
            # what imaplib.select would have recorded, so later imaplib commands are allowed
            imap.state = "SELECTED"
            imap.is_readonly = True
            response = client._process_select_response(untagged)
            state = self._folder_state(client, folder, response)
            vanished = tuple(
                bytes(v).replace(b"(EARLIER)", b"").strip()
                for v in untagged.get("VANISHED", [])
                if isinstance(v, bytes)
            )
            fetched = untagged.get("FETCH", [])
            parsed = parse_fetch_response(fetched, client.normalise_times, True) if fetched else {}
            changed = {
                uid: _flags(item.get(b"FLAGS", ()))
                for uid, item in parsed.items()
                if isinstance(uid, int) and b"FLAGS" in item
            }
        self.selected = state
        return QresyncSelect(state=state, vanished=vanished, changed=changed)

    def search_uid_range(self, first: int, last: int) -> list[int]:
        """UIDs in FIRST..LAST present in the selected folder (``UID SEARCH UID first:last``).

        An explicit range, never ``n:*``: ``*`` always matches the last message, so an open
        range would report an old message as new when nothing is newer. No command when empty.
        """
        if first < 1 or last < first:
            return []
        client = self._live_selected()
        with self._translate("listing the messages of the folder"):
            found = client.search(["UID", f"{first}:{last}"])
        return sorted(uid for uid in found if first <= uid <= last)

    def fetch_flags_changed_since(self, first: int, last: int, modseq: int) -> dict[int, Flags]:
        """FLAGS of the UIDs in FIRST..LAST whose mod-sequence is above MODSEQ (CONDSTORE).

        One ``UID FETCH first:last (FLAGS) (CHANGEDSINCE modseq)``; the answer holds only the
        changed messages, so it costs the same for 1k and 100k unchanged messages.
        """
        if first < 1 or last < first:
            return {}
        client = self._live_selected()
        if not self._condstore:
            raise RuntimeError("CONDSTORE is not enabled on this session")
        with self._translate("fetching changed flags"):
            # imapclient's fetch() accepts a range but then fails filtering its answer by it
            # (it turns the messages argument into ints); the raw path sends the same command
            data = client._raw_command_untagged(
                b"FETCH",
                [f"{first}:{last}".encode(), b"(FLAGS)", f"(CHANGEDSINCE {modseq})".encode()],
                uid=True,
            )
            response = parse_fetch_response(data, client.normalise_times, True)
        return {
            uid: _flags(item.get(b"FLAGS", ()))
            for uid, item in response.items()
            if isinstance(uid, int) and first <= uid <= last and b"FLAGS" in item
        }

    def find_sent_folder(self) -> str | None:
        """The folder of sent mail: the one LIST marks ``\\Sent`` (RFC 6154), else a folder
        with a usual name (``Sent``, ``Sent Items``, ``Sent Messages``...); None if none."""
        client = self._live()
        with self._translate("listing the folders"):
            found = client.find_special_folder(imapclient.imapclient.SENT)
        return found if isinstance(found, str) else None

    def create_folder(self, name: str) -> None:
        """``CREATE`` and ``SUBSCRIBE`` a folder (a mailbox without a Sent folder gets one for
        the copies of CRM email, as a mail client would); an existing one is left as is."""
        client = self._live()
        with self._translate(f"creating the folder {name!r}"):
            if not client.folder_exists(name):
                client.create_folder(name)
            client.subscribe_folder(name)

    def append_message(
        self,
        folder: str,
        message: bytes,
        *,
        flags: Sequence[str] = ("\\Seen",),
        when: datetime | None = None,
    ) -> int | None:
        """``APPEND`` MESSAGE to FOLDER with FLAGS (default ``\\Seen``: a sent copy is read).

        Returns the new message's UID from the server's ``APPENDUID`` (UIDPLUS, RFC 4315), or
        None when the server does not say (no UIDPLUS): then ``find_by_message_id`` finds it.
        WHEN (timezone-aware) becomes the INTERNALDATE; by default the server's "now". Raises
        ``MailboxNotFound`` when the folder does not exist (``create_folder`` makes one).
        """
        if not isinstance(message, bytes | bytearray | memoryview) or not bytes(message).strip():
            raise ValueError("append_message needs the message as non-empty bytes")
        if isinstance(flags, str):
            raise TypeError("flags must be a sequence of flags, not one string")
        for flag in flags:
            if flag not in _SYSTEM_FLAGS and not _KEYWORD.fullmatch(flag):
                raise ValueError(f"not a flag APPEND can set: {flag!r}")
        if when is not None and when.utcoffset() is None:
            raise ValueError("when must be timezone-aware (a naive time would be read as local)")
        client = self._live()
        with self._translate(f"adding a message to the folder {folder!r}"):
            try:
                said = client.append(folder, bytes(message), flags=tuple(flags), msg_time=when)
            except imaplib.IMAP4.abort:
                raise
            except imaplib.IMAP4.error as exc:
                if response_code(self._server_text(exc)) == "TRYCREATE":
                    raise MailboxNotFound(
                        f"the folder {folder!r} does not exist in the mailbox of {self.username} "
                        f"on {self.endpoint.display}: create it or check the folder name in "
                        f"the mailbox settings (server said: {self._server_text(exc)})"
                    ) from None
                self._raise_if_missing(client, folder, exc)
                raise
        # imaplib also files the response code as an untagged answer: drop it, so a later
        # APPEND without one cannot be mistaken for this one
        client._imap.untagged_responses.pop("APPENDUID", None)
        text = said.decode("utf-8", "replace") if isinstance(said, bytes) else str(said)
        found = _APPENDUID.search(text)
        return int(found.group(2)) if found else None

    def append_messages(
        self, folder: str, messages: Sequence[bytes], *, flags: Sequence[str] = ("\\Seen",)
    ) -> None:
        """``APPEND`` each of MESSAGES to FOLDER with FLAGS, in one command where the server
        offers MULTIAPPEND (RFC 3502: one round trip, all or none), else one by one."""
        if len(messages) <= 1 or not self.has("MULTIAPPEND"):
            for message in messages:
                self.append_message(folder, message, flags=flags)
            return
        for message in messages:
            if not isinstance(message, bytes | bytearray | memoryview) or not message.strip():
                raise ValueError("append_messages needs each message as non-empty bytes")
        for flag in flags:
            if flag not in _SYSTEM_FLAGS and not _KEYWORD.fullmatch(flag):
                raise ValueError(f"not a flag APPEND can set: {flag!r}")
        client = self._live()
        items = [{"msg": bytes(m), "flags": tuple(flags)} for m in messages]
        with self._translate(f"adding {len(messages)} messages to the folder {folder!r}"):
            try:
                client.multiappend(folder, items)
            except imaplib.IMAP4.abort:
                raise
            except imaplib.IMAP4.error as exc:
                self._raise_if_missing(client, folder, exc)
                raise
        client._imap.untagged_responses.pop("APPENDUID", None)

    def find_by_message_id(self, folder: str, message_id: str) -> list[int]:
        """UIDs in FOLDER whose Message-ID is MESSAGE_ID (``<id@domain>``, brackets optional).

        ``UID SEARCH HEADER Message-ID`` is a case-insensitive substring match, so each hit's
        Message-ID is fetched and compared exactly (the domain case-insensitively): ``<b@x>``
        must not find ``<ab@x>``. FOLDER is selected read-only unless it already is selected.
        """
        wanted = _bare_message_id(message_id)
        if wanted is None or not _SEARCHABLE_ID.fullmatch(wanted):
            raise ValueError(f"not a message id: {message_id!r}")
        if self.selected is None or not _same_folder(self.selected.folder, folder):
            self.select(folder)
        client = self._live_selected()
        with self._translate("searching for a message by its Message-ID"):
            candidates = sorted(client.search(["HEADER", "Message-ID", wanted]))
        matches: list[int] = []
        for start in range(0, len(candidates), DEFAULT_BATCH_SIZE):
            chunk = candidates[start : start + DEFAULT_BATCH_SIZE]
            with self._translate("reading the Message-ID of the messages found"):
                response = client.fetch(chunk, ["BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"])
            for uid in chunk:
                item = response.get(uid, {})
                raw = next((v for k, v in item.items() if k.startswith(b"BODY[HEADER")), b"")
                if any(_same_message_id(found, wanted) for found in _message_ids(raw or b"")):
                    matches.append(uid)
        return matches

    # ------------------------------------------------------------------ searching
    def search_received_since(self, day: date) -> list[int]:
        """UIDs of messages the server received on or after DAY (``UID SEARCH SINCE``).

        IMAP compares dates only (no time, the server's zone), so the caller filters the
        messages of DAY itself by their INTERNALDATE.
        """
        client = self._live_selected()
        with self._translate("searching for messages received since a date"):
            found = client.search(["SINCE", day])
        return sorted(found)

    def search_uids_since(self, after_uid: int) -> list[int]:
        """UIDs greater than AFTER_UID in the selected folder, ascending (``UID n+1:*``)."""
        if after_uid < 0:
            raise ValueError("after_uid must be >= 0")
        client = self._live_selected()
        with self._translate("searching for new messages"):
            found = client.search(["UID", f"{after_uid + 1}:*"])
        # "n:*" always matches the last message, even when its UID is below n
        return sorted(uid for uid in found if uid > after_uid)

    # ------------------------------------------------------------------ fetching
    def fetch_headers(
        self, uids: Iterable[int], plan: FetchPlan, *, batch_size: int = DEFAULT_BATCH_SIZE
    ) -> list[HeaderFetch]:
        """Metadata and the plan's header fields of UIDS, ascending by UID.

        UIDs that no longer exist (expunged meanwhile) are missing from the result.
        """
        batches = self.iter_header_batches(uids, plan, batch_size=batch_size)
        return [fetched for batch in batches for fetched in batch]

    def iter_header_batches(
        self, uids: Iterable[int], plan: FetchPlan, *, batch_size: int = DEFAULT_BATCH_SIZE
    ) -> Iterator[list[HeaderFetch]]:
        """Like ``fetch_headers``, one list per FETCH command (commit per batch if you like)."""
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        wanted = sorted({_valid_uid(uid) for uid in uids})
        if not wanted:
            return  # nothing to fetch: no folder need be selected (an unchanged folder's sync)
        fields = header_fields_for(plan)
        client = self._live_selected()
        items = header_fetch_items(plan, with_modseq=self._condstore)
        for start in range(0, len(wanted), batch_size):
            chunk = wanted[start : start + batch_size]
            with self._translate(f"fetching the headers of {len(chunk)} messages"):
                response = client.fetch(chunk, items)
            yield [
                header_fetch_from_response(uid, response[uid], fields, include_subject=plan.subject)
                for uid in chunk
                if uid in response
            ]

    def fetch_message(self, uid: int, plan: FetchPlan) -> bytes:
        """The whole message (``BODY.PEEK[]``: the \\Seen flag is left alone).

        Raises ``PrivacyViolation`` before anything is sent when the plan forbids whole messages.
        """
        if not plan.full_message:
            raise PrivacyViolation(
                "fetch_message was called with a fetch plan that forbids whole messages "
                "(privacy level metadata or subject): only headers may be fetched for this "
                "mailbox; this is a bug in the caller"
            )
        uid = _valid_uid(uid)
        client = self._live_selected()
        with self._translate(f"fetching message {uid}"):
            response = client.fetch([uid], ["BODY.PEEK[]"])
        data = response.get(uid, {}).get(b"BODY[]")
        if data is None:
            raise MessageNotFound(
                f"message {uid} is no longer in the folder {self._folder_name()!r} of "
                f"{self.username} on {self.endpoint.display} (deleted or moved meanwhile)"
            )
        return bytes(data)

    def fetch_messages(
        self, uids: Iterable[int], plan: FetchPlan, *, batch_size: int = 100
    ) -> Iterator[tuple[int, bytes]]:
        """Whole messages of UIDS (``BODY.PEEK[]``), BATCH_SIZE per command, as (uid, bytes).

        Messages gone meanwhile are left out (the caller notices the missing UID). Raises
        ``PrivacyViolation`` before anything is sent when the plan forbids whole messages.
        """
        if not plan.full_message:
            raise PrivacyViolation(
                "fetch_messages was called with a fetch plan that forbids whole messages "
                "(privacy level metadata or subject); this is a bug in the caller"
            )
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        wanted = sorted({_valid_uid(uid) for uid in uids})
        client = self._live_selected()
        for start in range(0, len(wanted), batch_size):
            chunk = wanted[start : start + batch_size]
            with self._translate(f"fetching {len(chunk)} messages"):
                response = client.fetch(chunk, ["BODY.PEEK[]"])
            for uid in chunk:
                data = response.get(uid, {}).get(b"BODY[]")
                if data is not None:
                    yield uid, bytes(data)

    def add_keyword(self, uids: Iterable[int], keyword: str) -> bool:
        """Set KEYWORD (e.g. ``$CRMTracked``) on UIDS of the folder selected read-write.

        Returns False, sending nothing, when the folder does not keep such keywords
        (PERMANENTFLAGS has neither the keyword nor ``\\*``): the mark is a courtesy to the
        user's mail client, never a reason to fail a sync.
        """
        if not _KEYWORD.fullmatch(keyword):
            raise ValueError(f"not an IMAP keyword: {keyword!r}")
        wanted = sorted({_valid_uid(uid) for uid in uids})
        if not wanted:
            return True
        client = self._live_selected()
        if not self.selected_writable:
            raise RuntimeError("add_keyword needs the folder selected with readonly=False")
        if "\\*" not in self.permanent_flags and keyword not in self.permanent_flags:
            return False
        for start in range(0, len(wanted), DEFAULT_BATCH_SIZE):
            chunk = wanted[start : start + DEFAULT_BATCH_SIZE]
            with self._translate(f"marking {len(chunk)} messages {keyword}"):
                client.add_flags(chunk, [keyword], silent=True)
        return True

    # ------------------------------------------------------------------ internals
    def _live(self) -> ConnectingIMAPClient:
        if self._client is None:
            if self._broken:
                raise ConnectionLost(
                    f"the connection to the IMAP server {self.endpoint.display} was lost "
                    "earlier; open a new session"
                )
            raise RuntimeError("the IMAP session is not open: use it as a context manager")
        return self._client

    def _live_selected(self) -> ConnectingIMAPClient:
        client = self._live()
        if self.selected is None:
            raise RuntimeError("no folder is selected: call select() first")
        return client

    def _folder_name(self) -> str:
        return self.selected.folder if self.selected else ""

    def _server_text(self, exc: BaseException) -> str:
        """The server's words from an imaplib/imapclient error, bounded and password-free."""
        text = str(exc)
        # imaplib/imapclient prefixes: "select failed: ", "command: SELECT => "
        text = re.sub(r"^(\w+ failed: |command: \w+ => )+", "", text)
        text = re.sub(r"""\bb(['"])(.*?)\1""", r"\2", text)  # bytes reprs: b'...' -> ...
        text = re.sub(r"\s*\(\d+\.\d+( \+ \d+\.\d+)* secs\)", "", text)  # Dovecot timings
        text = "".join(ch if ch.isprintable() else " " for ch in text).strip()[:300]
        return self._scrub(text) or "nothing"

    def _scrub(self, text: str) -> str:
        secret = self._password.reveal()
        if len(secret) >= 4 and secret in text:
            text = text.replace(secret, "***")
        return text

    @contextlib.contextmanager
    def _translate(self, action: str) -> Iterator[None]:
        """Turn socket, TLS and imaplib exceptions into ``ImapError`` kinds."""
        try:
            yield
        except (ImapError, PrivacyViolation):
            raise
        except Exception as exc:
            self._fail(action, exc)

    def _fail(self, action: str, exc: Exception) -> NoReturn:
        where = f"the IMAP server {self.endpoint.display}"
        lost = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)
        if isinstance(exc, ssl.SSLCertVerificationError):
            self._drop()
            raise TlsFailure(
                f"the certificate of {where} is not trusted ({exc.verify_message}): check the "
                "host name in the mailbox URL, or install the CA that signed the server's "
                "certificate"
            ) from exc
        if isinstance(exc, ssl.SSLError) and not (self._logged_in and isinstance(exc, lost)):
            self._drop()
            kind = "TLS (imaps://)" if self.endpoint.security is Security.IMPLICIT_TLS else "TLS"
            raise TlsFailure(
                f"{kind} with {where} failed while {action} ({exc.reason or exc}): check that "
                "the port and the scheme of the mailbox URL match the server"
            ) from exc
        if isinstance(exc, TimeoutError):
            self._drop()
            raise ConnectionTimedOut(
                f"{where} did not answer within {self._timeout_for(action):g} s while {action}; "
                "crmsync will retry"
            ) from exc
        if isinstance(exc, ConnectionRefusedError):
            self._drop()
            raise ServerUnavailable(
                f"{where} refused the connection: the server is down or the port is wrong; "
                "crmsync will retry"
            ) from exc
        if isinstance(exc, socket.gaierror):
            self._drop()
            raise ServerUnavailable(
                f"the host name {self.endpoint.host!r} cannot be resolved ({exc.strerror}): "
                "check the mailbox URL; crmsync will retry"
            ) from exc
        if isinstance(exc, ConnectionError | EOFError | ssl.SSLError):
            self._drop()
            raise ConnectionLost(
                f"the connection to {where} was lost while {action} "
                f"({self._scrub(str(exc)) or type(exc).__name__}); crmsync will retry"
            ) from exc
        if isinstance(exc, OSError):
            self._drop()
            raise ServerUnavailable(
                f"{where} cannot be reached while {action} ({exc.strerror or exc}); "
                "crmsync will retry"
            ) from exc
        if isinstance(exc, imaplib.IMAP4.abort):
            self._drop()
            said = self._server_text(exc)
            if "timed out" in said:
                raise ConnectionTimedOut(
                    f"{where} did not answer within {self.timeout:g} s while {action}; "
                    "crmsync will retry"
                ) from exc
            raise ConnectionLost(
                f"the connection to {where} was lost while {action} ({said}); crmsync will retry"
            ) from exc
        if isinstance(exc, ProtocolError):
            # the reply could not be parsed: where the next reply starts is unknown, so the
            # connection cannot be trusted any more; a new session may well succeed
            self._drop()
            raise CommandFailed(
                f"{where} sent a reply crmsync cannot parse while {action} "
                f"({self._server_text(exc)}); crmsync will retry",
                transient=True,
            ) from exc
        if isinstance(exc, imaplib.IMAP4.error):
            said = self._server_text(exc)
            if not self._logged_in and self._client is None:
                # refused at the greeting (e.g. "* BYE too many connections")
                self._drop()
                raise ServerUnavailable(
                    f"{where} turned the connection away ({said}); crmsync will retry"
                ) from exc
            code = response_code(said)
            # imaplib words a BAD answer "<COMMAND> command error: BAD [...]"
            bad = "command error: BAD" in str(exc)
            raise CommandFailed(
                f"{where} refused {action} for {self.username} (server said: {said})",
                transient=(code in TRANSIENT_CODES) or (code is None and not bad),
            ) from exc
        raise exc

    def _timeout_for(self, action: str) -> float:
        return self.connect_timeout if action == "connecting" else self.timeout


Flags = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class QresyncSelect:
    """What a QRESYNC EXAMINE reported besides the folder state."""

    state: FolderState
    vanished: tuple[bytes, ...]
    """The UID sets of ``VANISHED (EARLIER)`` responses, raw (``b"3:5,9"``)."""
    changed: dict[int, Flags]
    """UID -> FLAGS of every message changed (or added) since the given mod-sequence."""


def _flags(raw: Iterable[object]) -> Flags:
    return tuple(f.decode("utf-8", "replace") if isinstance(f, bytes) else str(f) for f in raw)


def response_code(text: str) -> str | None:
    """The RFC 5530 response code in a server answer (``[AUTHENTICATIONFAILED] ...``)."""
    found = _RESPONSE_CODE.search(text)
    return found.group(1) if found else None


def _same_folder(listed: str, wanted: str) -> bool:
    if listed.upper() == "INBOX" and wanted.upper() == "INBOX":
        return True  # INBOX is case-insensitive (RFC 3501 5.1)
    return listed == wanted


def _bare_message_id(value: str) -> str | None:
    """The id inside ``<...>`` (or the whole trimmed text when it has no brackets)."""
    if not isinstance(value, str):
        return None
    found = _BRACKETED.search(value)
    text = (found.group(1) if found else value).strip()
    return text or None


def _message_ids(raw: bytes) -> list[str]:
    """The ids of the ``Message-ID:`` lines in a ``HEADER.FIELDS`` answer (unfolded)."""
    text = re.sub(r"\r?\n[ \t]+", " ", raw.decode("ascii", "replace"))
    ids = []
    for line in text.splitlines():
        name, colon, value = line.partition(":")
        if colon and name.strip().lower() == "message-id":
            bare = _bare_message_id(value)
            if bare:
                ids.append(bare)
    return ids


def _same_message_id(found: str, wanted: str) -> bool:
    """Exact, except the part after the last ``@`` (a domain) ignores case."""
    local_f, at_f, domain_f = found.rpartition("@")
    local_w, at_w, domain_w = wanted.rpartition("@")
    if not (at_f and at_w):
        return found == wanted
    return local_f == local_w and domain_f.lower() == domain_w.lower()


def _valid_uid(uid: int) -> int:
    if isinstance(uid, bool) or not isinstance(uid, int) or not 0 < uid < 2**32:
        raise ValueError(f"not an IMAP UID: {uid!r}")
    return uid
