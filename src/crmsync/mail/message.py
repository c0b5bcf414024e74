"""Parse a whole message (``BODY.PEEK[]`` bytes) into bodies and attachments, never raising.

The result is what the CRM stores as an email activity: the subject, the text and HTML bodies
and the attachments, each bounded in size. The input is raw bytes from a stranger, so nothing
about it is trusted: charsets may be unknown or wrong, base64 may be broken, multiparts may
never close or nest a thousand levels deep, headers may carry raw 8-bit bytes or NULs. Every
such oddity becomes a *defect* (a sentence an admin can read) and the best possible result; the
only error is :class:`MessageParseError`, for bytes that hold no message at all.

Why ``policy.compat32`` and our own decoding: the modern ``email`` policy is about twice as
slow and raises on hostile input deep inside its header classes. ``compat32`` splits the MIME
tree leniently and keeps header values and payloads raw (ASCII with surrogate escapes), so the
decoding - which is where the hostility lives - is done here, bounded and caught step by step.

Defects name the part and the problem, never a value (a subject or file name can be personal;
defects are logged and stored).
"""

from __future__ import annotations

import binascii
import codecs
import functools
import hashlib
import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from email import policy
from email.generator import BytesGenerator
from email.message import Message
from email.parser import BytesParser
from urllib.parse import unquote_to_bytes

__all__ = [
    "MessageParseError",
    "ParsedAttachment",
    "ParsedMessage",
    "parse_message",
]

_Defect = Callable[[str], None]
"""Records one defect sentence."""

MAX_SUBJECT_CHARS = 400
MAX_DEFECTS = 20
MAX_DEFECT_CHARS = 200
MAX_FILENAME_CHARS = 255
MAX_CONTENT_TYPE_CHARS = 255
MAX_CONTENT_ID_CHARS = 255
MAX_HEADER_VALUE_CHARS = 16 * 1024
"""Raw header text decoded per field: far more than any kept value needs (400 chars at most,
even as encoded words), and it bounds the work on a 200 KB Subject."""
MAX_PARAM_SECTIONS = 100
"""RFC 2231 continuation sections joined per parameter; more is an attack, not a file name."""


@dataclass(frozen=True, slots=True)
class ParsedAttachment:
    """One attachment (or inline part) of a message.

    ``size`` and ``sha256`` describe the whole decoded content even when ``content`` is empty
    because the attachment was over ``max_attachment_bytes`` (then ``size != len(content)``).
    """

    filename: str
    content_type: str
    content_id: str | None
    content: bytes
    size: int
    sha256: str
    inline: bool


@dataclass(frozen=True, slots=True)
class ParsedMessage:
    """What a message holds, bounded; ``defects`` says what was odd about it."""

    subject: str
    text_body: str | None
    html_body: str | None
    attachments: tuple[ParsedAttachment, ...]
    defects: tuple[str, ...]
    size: int


class MessageParseError(ValueError):
    """The bytes are not a message at all (empty, or no header/body structure could be found)."""


# --- the entry point ---------------------------------------------------------------------------


def parse_message(
    raw: bytes,
    *,
    max_attachment_bytes: int = 5 * 1024 * 1024,
    max_body_chars: int = 1_000_000,
    max_parts: int = 500,
    max_depth: int = 20,
) -> ParsedMessage:
    """Parse ``raw`` (a whole RFC 5322 message) into a :class:`ParsedMessage`.

    Raises :class:`MessageParseError` only when ``raw`` is empty, only whitespace, or has no
    header line at all; any other problem is recorded in ``defects``.
    """
    if isinstance(raw, bytearray | memoryview):
        raw = bytes(raw)
    if not isinstance(raw, bytes):
        raise TypeError(f"parse_message needs bytes, not {type(raw).__name__}")
    if not raw.strip():
        raise MessageParseError(
            "The message is empty: the server returned no data for it."
            if not raw
            else "The message contains only whitespace, no header or body."
        )
    builder = _Builder(
        max_attachment_bytes=max_attachment_bytes,
        max_body_chars=max_body_chars,
        max_parts=max_parts,
        max_depth=max_depth,
        linesep="\r\n" if b"\r\n" in raw[:8192] else "\n",
    )
    try:
        msg: Message = BytesParser(policy=policy.compat32).parsebytes(raw)
    except Exception as exc:  # hostile input must not stop a batch
        # Deep nesting makes the stdlib's recursive multipart parser overflow the stack: keep
        # the header and the body as text rather than nothing.
        return _fallback(raw, builder, exc)
    if not msg.keys():
        raise MessageParseError(
            "The data is not a mail message: it has no header lines (such as 'From:' or "
            "'Subject:') at the start."
        )
    try:
        builder.subject = _subject(msg, builder.defect)
    except Exception as exc:
        builder.defect(f"The subject could not be read ({type(exc).__name__}).")
    try:
        builder.walk(msg)
    except Exception as exc:  # keep what was collected so far
        builder.defect(f"Reading the message stopped early on an internal error ({_name(exc)}).")
    return builder.result(len(raw))


def _fallback(raw: bytes, builder: _Builder, exc: BaseException) -> ParsedMessage:
    builder.defect(
        f"The MIME structure could not be read ({_name(exc)}); the body is kept as plain text."
    )
    try:
        msg = BytesParser(policy=policy.compat32).parsebytes(raw, headersonly=True)
    except Exception as exc2:
        builder.defect(f"The header could not be read either ({_name(exc2)}).")
        return builder.result(len(raw))
    if not msg.keys():
        raise MessageParseError(
            "The data is not a mail message: it has no header lines at the start."
        ) from None
    try:
        builder.subject = _subject(msg, builder.defect)
        payload = _raw_payload(msg)
        if isinstance(payload, str):
            text = _decode_text(_payload_bytes(payload), None, "the body", builder.defect)
            builder.text_body = builder.cut_body(text, "text")
    except Exception as exc2:
        builder.defect(f"The body could not be read ({_name(exc2)}).")
    return builder.result(len(raw))


def _name(exc: BaseException) -> str:
    return type(exc).__name__


# --- walking the MIME tree ---------------------------------------------------------------------

_BODY_TYPES = ("text/plain", "text/html")

_EMAIL_DEFECTS = {
    "NoBoundaryInMultipartDefect": "A multipart part has no boundary parameter; its content "
    "was kept as text.",
    "StartBoundaryNotFoundDefect": "A multipart boundary never appears in its body; the "
    "content was kept as text.",
    "CloseBoundaryNotFoundDefect": "A multipart part is not closed by its end boundary (the "
    "message may be truncated).",
    "FirstHeaderLineIsContinuationDefect": "The first header line is indented, as if it "
    "continued a missing field.",
    "MisplacedEnvelopeHeaderDefect": "An mbox 'From ' line appears among the header fields.",
    "MissingHeaderBodySeparatorDefect": "A header line is malformed or the blank line between "
    "header and body is missing; the rest was read as body.",
    "MultipartInvariantViolationDefect": "A part declared multipart has no sub-parts.",
    "InvalidHeaderDefect": "A header line has no field name before its colon.",
    "InvalidMultipartContentTransferEncodingDefect": "A multipart part declares a transfer "
    "encoding other than 7bit, 8bit or binary.",
}


class _Builder:
    """Collects bodies, attachments and defects while the tree is walked (depth first)."""

    def __init__(
        self,
        *,
        max_attachment_bytes: int,
        max_body_chars: int,
        max_parts: int,
        max_depth: int,
        linesep: str,
    ) -> None:
        self.max_attachment_bytes = max_attachment_bytes
        self.max_body_chars = max_body_chars
        self.max_parts = max_parts
        self.max_depth = max_depth
        self.linesep = linesep
        self.subject = ""
        self.text_body: str | None = None
        self.html_body: str | None = None
        self.attachments: list[ParsedAttachment] = []
        self._defects: dict[str, None] = {}  # ordered and without repeats

    def defect(self, text: str) -> None:
        if len(text) > MAX_DEFECT_CHARS:
            text = text[: MAX_DEFECT_CHARS - 3] + "..."
        self._defects[text] = None

    def cut_body(self, text: str, kind: str) -> str:
        if len(text) > self.max_body_chars:
            self.defect(
                f"The {kind} body has {len(text):,} characters; it was cut to "
                f"{self.max_body_chars:,}."
            )
            return text[: self.max_body_chars]
        return text

    def result(self, size: int) -> ParsedMessage:
        defects = list(self._defects)
        if len(defects) > MAX_DEFECTS:
            defects = [*defects[:MAX_DEFECTS], f"... and {len(defects) - MAX_DEFECTS} more"]
        return ParsedMessage(
            subject=self.subject,
            text_body=self.text_body,
            html_body=self.html_body,
            attachments=tuple(self.attachments),
            defects=tuple(defects),
            size=size,
        )

    def walk(self, root: Message) -> None:
        # An explicit stack, not recursion: nesting depth is chosen by the sender.
        stack: list[tuple[Message, int]] = [(root, 0)]
        seen = 0
        too_deep = False
        while stack:
            part, depth = stack.pop()
            if depth > self.max_depth:
                too_deep = True
                continue
            seen += 1
            if seen > self.max_parts:
                self.defect(
                    f"The message has more than {self.max_parts} parts; the rest were skipped."
                )
                break
            for found in getattr(part, "defects", ()):
                key = type(found).__name__
                self.defect(_EMAIL_DEFECTS.get(key, f"The mail parser reported {key}."))
            try:
                children = self._part(part, seen)
            except Exception as exc:  # one bad part must not lose the others
                self.defect(f"Part {seen} could not be read ({_name(exc)}); it was skipped.")
                continue
            stack.extend((child, depth + 1) for child in reversed(children))
        if too_deep:
            self.defect(
                f"Parts are nested deeper than {self.max_depth} levels; the deeper ones "
                "were skipped."
            )

    def _part(self, part: Message, number: int) -> list[Message]:
        """Handle one part; return its sub-parts (for a multipart), else ``[]``."""
        fields = _fields(part)
        ctype, cparams, ctype_valid = _content_type(fields.get("content-type"))
        payload = _raw_payload(part)
        if isinstance(payload, list):
            if ctype.startswith("message/"):
                self._attach_message(part, payload, cparams, fields)
                return []
            if not payload:
                self.defect(f"Multipart part {number} has no sub-parts.")
            return [p for p in payload if isinstance(p, Message)]
        if not isinstance(payload, str):
            return []

        disposition, dparams = _parse_params(fields.get("content-disposition") or "")
        disposition = disposition.lower()
        filename = _param_text(dparams, "filename", self.defect) or _param_text(
            cparams, "name", self.defect
        )
        if ctype.startswith("multipart/"):
            # no boundary, or the boundary never appears: the stdlib leaves the body as text
            ctype, ctype_valid = "text/plain", True
        attachment_like = disposition == "attachment" or bool(filename)
        if not ctype_valid:
            if fields.get("content-type") is not None:
                self.defect(f"Part {number} has an invalid Content-Type.")
            ctype = "application/octet-stream" if attachment_like else "text/plain"

        cte = _clean_token(fields.get("content-transfer-encoding") or "")
        data, uu_name = _decode_transfer(_payload_bytes(payload), cte, number, self.defect)
        filename = filename or uu_name

        if not attachment_like and ctype in _BODY_TYPES:
            kind = "text" if ctype == "text/plain" else "HTML"
            if (self.text_body if kind == "text" else self.html_body) is None:
                label = f"the {kind} body"
                text = _decode_text(data, _charset_param(cparams), label, self.defect)
                text = self.cut_body(text, kind)
                if kind == "text":
                    self.text_body = text
                else:
                    self.html_body = text
                return []
        content_id = _content_id(fields.get("content-id"))
        self._attach(
            data,
            filename=filename,
            content_type=ctype,
            content_id=content_id,
            # Outlook and others send related images without a Content-Disposition
            inline=content_id is not None and disposition != "attachment",
        )
        return []

    def _attach_message(
        self, part: Message, payload: list[object], cparams: dict[str, str], fields: dict
    ) -> None:
        _disposition, dparams = _parse_params(fields.get("content-disposition") or "")
        filename = _param_text(dparams, "filename", self.defect) or _param_text(
            cparams, "name", self.defect
        )
        inner = [p for p in payload if isinstance(p, Message)]
        if not filename and inner:
            try:
                subject = _subject(inner[0], lambda _text: None)
            except Exception:  # a name is a nicety
                subject = ""
            filename = f"{subject}.eml" if subject else ""
        chunks = []
        for message in inner:
            try:
                buffer = io.BytesIO()
                gen_policy = policy.compat32.clone(linesep=self.linesep)
                BytesGenerator(buffer, mangle_from_=False, policy=gen_policy).flatten(message)
                chunks.append(buffer.getvalue())
            except Exception as exc:
                self.defect(f"An attached message could not be rebuilt ({_name(exc)}).")
        content_id = _content_id(fields.get("content-id"))
        self._attach(
            self.linesep.encode().join(chunks),
            filename=filename or "",
            content_type=_content_type(fields.get("content-type"))[0],
            content_id=content_id,
            inline=False,
        )

    def _attach(
        self,
        data: bytes,
        *,
        filename: str,
        content_type: str,
        content_id: str | None,
        inline: bool,
    ) -> None:
        number = len(self.attachments) + 1
        name = _safe_filename(filename)
        if not name:
            name = f"attachment-{number}{_EXTENSIONS.get(content_type, '')}"
        size = len(data)
        digest = hashlib.sha256(data).hexdigest()
        if size > self.max_attachment_bytes:
            self.defect(
                f"Attachment {number} ({size:,} bytes) is over the "
                f"{self.max_attachment_bytes:,}-byte limit; its content was not kept."
            )
            data = b""
        self.attachments.append(
            ParsedAttachment(
                filename=name,
                content_type=content_type[:MAX_CONTENT_TYPE_CHARS],
                content_id=content_id,
                content=data,
                size=size,
                sha256=digest,
                inline=inline,
            )
        )


# --- header fields -----------------------------------------------------------------------------

_MIME_FIELDS = frozenset(
    ("content-type", "content-disposition", "content-transfer-encoding", "content-id")
)


def _fields(part: Message) -> dict[str, str]:
    """The first value of each MIME field of ``part``, raw (ASCII with surrogate escapes)."""
    found: dict[str, str] = {}
    for name, value in part.raw_items():
        key = name.strip().lower()
        if key in _MIME_FIELDS and key not in found and isinstance(value, str):
            found[key] = value[:MAX_HEADER_VALUE_CHARS]
    return found


def _subject(msg: Message, defect: _Defect) -> str:
    values = [v for k, v in msg.raw_items() if k.strip().lower() == "subject"]
    if not values:
        return ""
    if len(values) > 1:
        defect(f"The message has {len(values)} Subject fields; the first was used.")
    value = values[0] if isinstance(values[0], str) else str(values[0])
    subject = _decode_header(value, "Subject", defect)
    if len(subject) > MAX_SUBJECT_CHARS:
        defect(f"The subject has {len(subject):,}+ characters; it was cut to {MAX_SUBJECT_CHARS}.")
        subject = subject[:MAX_SUBJECT_CHARS].rstrip()
    return subject


_FOLD = re.compile(r"\r?\n(?=[ \t])")
_LINE_BREAK = re.compile(r"[\r\n\t]")
# C0 and C1 controls, DEL, and the bidirectional overrides that disguise file names
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_ENCODED_WORD = re.compile(r"=\?([^?\s*]{1,40})(?:\*[^?\s]{0,40})?\?([bBqQ])\?([^?\s]*)\?=")
_SURROGATE = re.compile("[\udc80-\udcff]")


def _decode_header(value: str, field: str, defect: _Defect) -> str:
    """Unfold and decode a header value: raw 8-bit bytes, encoded words, controls removed."""
    if len(value) > MAX_HEADER_VALUE_CHARS:
        value = value[:MAX_HEADER_VALUE_CHARS]
    value = _LINE_BREAK.sub(" ", _FOLD.sub("", value))
    if _SURROGATE.search(value):
        value = _decode_8bit(value, f"The {field} field", defect)
    if "=?" in value:
        value = _decode_encoded_words(value, field, defect)
    return _valid_text(_CONTROL.sub("", value)).strip()


def _decode_8bit(value: str, what: str, defect: _Defect) -> str:
    """Decode text that held raw 8-bit bytes (kept as surrogate escapes by the parser)."""
    data = _to_bytes(value)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    defect(f"{what} has raw 8-bit bytes that are not UTF-8; read as Windows-1252.")
    return _single_byte(data)


def _decode_encoded_words(value: str, field: str, defect: _Defect) -> str:
    # (text, None) for plain text, (bytes, charset) for an encoded word
    pieces: list[tuple[str | bytes, str | None]] = []
    position = 0
    for match in _ENCODED_WORD.finditer(value):
        between = value[position : match.start()]
        # whitespace between two encoded words is not part of the text (RFC 2047 6.2)
        if between and not (between.isspace() and pieces and pieces[-1][1] is not None):
            pieces.append((between, None))
        charset, encoding, text = match.groups()
        if encoding in "bB":
            data = _lenient_b64(_to_bytes(text))
            if data is None:
                defect(f"The {field} field has an encoded word with broken base64.")
                data = _lenient_b64(_to_bytes(text), strict=False) or b""
        else:
            data = binascii.a2b_qp(_to_bytes(text), header=True)
        charset = charset.lower()
        if pieces and pieces[-1][1] == charset and isinstance(pieces[-1][0], bytes):
            # a multi-byte character may be split across adjacent words: join before decoding
            pieces[-1] = (pieces[-1][0] + data, charset)
        else:
            pieces.append((data, charset))
        position = match.end()
    if not pieces:
        return value
    pieces.append((value[position:], None))
    out = []
    for piece, charset in pieces:
        if isinstance(piece, bytes):
            out.append(_decode_text(piece, charset, f"an encoded word in {field}", defect))
        else:
            out.append(piece)
    return "".join(out)


# --- MIME parameters ---------------------------------------------------------------------------

_PARAM = re.compile(r';\s*([^\s=;"]+)\s*(?:=\s*("(?:[^"\\]|\\.)*"?|[^;]*))?', re.DOTALL)
_SECTION = re.compile(r"^(.+?)\*(?:(\d{1,3})\*?)?$")
_TYPE = re.compile(r"[a-z0-9!#$&^_.+-]{1,100}/[a-z0-9!#$&^_.+-]{1,100}")
# Only \\ and \" are unescaped (as the stdlib does): Windows mailers send "C:\dir\file" raw.
_BACKSLASH = re.compile(r"\\([\\\"])")


def _parse_params(value: str) -> tuple[str, dict[str, str]]:
    """Split ``type; a=1; b*=utf-8''%C3%A4`` into the type and decoded-later parameters.

    RFC 2231 parameters come back as ``name*`` holding ``charset'lang'percent-encoded`` text:
    continuations are joined here, charset decoding is left to :func:`_param_text`.
    """
    value = _FOLD.sub("", value)
    main, _, rest = value.partition(";")
    params: dict[str, str] = {}
    sections: dict[str, dict[int, tuple[str, bool]]] = {}
    for match in _PARAM.finditer(";" + rest):
        name = match.group(1).lower()
        raw = (match.group(2) or "").strip()
        if raw.startswith('"'):
            raw = _BACKSLASH.sub(
                r"\1", raw[1:-1] if raw.endswith('"') and len(raw) > 1 else raw[1:]
            )
        section = _SECTION.match(name)
        if section is None:
            params.setdefault(name, raw)
            continue
        base, number = section.group(1), section.group(2)
        encoded = name.endswith("*")
        if number is None:
            params.setdefault(base + "*", raw)
        elif len(sections.setdefault(base, {})) < MAX_PARAM_SECTIONS:
            sections[base].setdefault(int(number), (raw, encoded))
    for base, parts in sections.items():
        if base + "*" in params:
            continue
        joined = []
        for index, (raw, encoded) in enumerate(parts[n] for n in sorted(parts)):
            if index == 0 and not encoded:
                raw = "''" + _percent_escape(raw)
            elif index and not encoded:
                raw = _percent_escape(raw)
            joined.append(raw)
        params[base + "*"] = "".join(joined)
    return main.strip(), params


def _percent_escape(text: str) -> str:
    return text.replace("%", "%25")


def _param_text(params: dict[str, str], name: str, defect: _Defect) -> str:
    """The decoded value of parameter ``name`` (RFC 2231 form preferred), or ``""``."""
    extended = params.get(name + "*")
    if extended is not None:
        charset, _, rest = extended.partition("'")
        _language, quote, text = rest.partition("'")
        if not quote:  # not in charset'lang'value form: take it as plain text
            charset, text = "", extended
        data = unquote_to_bytes(_to_bytes(text))
        return _decode_text(data, charset or None, f"the {name} parameter", defect)
    value = params.get(name)
    if not value:
        return ""
    if _SURROGATE.search(value):
        value = _decode_8bit(value, f"The {name} parameter", defect)
    if "=?" in value:  # not allowed in parameters, but what many mailers send
        value = _decode_encoded_words(value, name, defect)
    return value


def _content_type(value: str | None) -> tuple[str, dict[str, str], bool]:
    """``(type/subtype, params, valid)``; a missing field is valid ``text/plain``."""
    if value is None:
        return "text/plain", {}, True
    main, params = _parse_params(value)
    ctype = main.strip().strip('"').lower()
    if _TYPE.fullmatch(ctype):
        return ctype, params, True
    return "application/octet-stream", params, False


def _charset_param(params: dict[str, str]) -> str | None:
    value = params.get("charset")
    if value is None and "charset*" in params:
        value = params["charset*"].rpartition("'")[2]
    return value


def _content_id(value: str | None) -> str | None:
    if value is None:
        return None
    if _SURROGATE.search(value):
        value = _to_bytes(value).decode("utf-8", "replace")
    text = _CONTROL.sub("", value).strip().strip("<>").strip()
    return _valid_text(text[:MAX_CONTENT_ID_CHARS]) or None


def _clean_token(value: str) -> str:
    return _CONTROL.sub("", value).strip().strip("\"'").strip().lower()


# --- transfer encodings ------------------------------------------------------------------------

_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_NOT_ALPHABET = bytes(b for b in range(256) if b not in _B64_ALPHABET)
_B64_EXPECTED = _B64_ALPHABET + b"= \t\r\n"
_QP_BAD_ESCAPE = re.compile(rb"=(?![0-9A-Fa-f]{2})(?![ \t]*(?:\r\n|\r|\n|$))")
_PLAIN_ENCODINGS = frozenset(("", "7bit", "8bit", "binary"))
_UU_ENCODINGS = frozenset(("x-uuencode", "uuencode", "x-uue", "uue"))


def _raw_payload(part: Message) -> object:
    # Not get_payload(): for 8-bit bodies it decodes the text itself, with "replace", in the
    # declared charset - the decision this module makes (and reports) on its own.
    return getattr(part, "_payload", None)


def _payload_bytes(payload: str) -> bytes:
    # the bytes parser decoded the body as ASCII with surrogate escapes: this is the original
    return _to_bytes(payload)


def _to_bytes(text: str) -> bytes:
    """The original bytes of parser text (ASCII with surrogate escapes) - or of text that was
    decoded already, as UTF-8."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that no escape produced
        return text.encode("utf-8", "replace")


def _decode_transfer(
    data: bytes, cte: str, number: int, defect: _Defect
) -> tuple[bytes, str | None]:
    """Undo the Content-Transfer-Encoding; returns the content and a uuencoded file name."""
    if cte in _PLAIN_ENCODINGS:
        return data, None
    if cte == "base64":
        decoded = _lenient_b64(data)
        if decoded is None:
            defect(
                f"Part {number} has broken base64 (bad characters or padding); decoded leniently."
            )
            decoded = _lenient_b64(data, strict=False) or b""
        return decoded, None
    if cte == "quoted-printable":
        if _QP_BAD_ESCAPE.search(data):
            defect(f"Part {number} has invalid quoted-printable escapes; they were kept as is.")
        return binascii.a2b_qp(data), None
    if cte in _UU_ENCODINGS:
        return _uudecode(data, number, defect)
    defect(f"Part {number} has an unknown Content-Transfer-Encoding; its content was kept raw.")
    return data, None


def _lenient_b64(data: bytes, *, strict: bool = True) -> bytes | None:
    """Decode base64; with ``strict`` return ``None`` when the input was not clean base64."""
    cleaned = data.translate(None, _B64_NOT_ALPHABET)
    remainder = len(cleaned) % 4
    if strict:
        junk = data.translate(None, _B64_EXPECTED)
        padding = data.rstrip(b" \t\r\n")
        pad = len(padding) - len(padding.rstrip(b"="))
        if junk or remainder == 1 or pad != (4 - remainder) % 4 or data.count(b"=") != pad:
            return None
    if remainder == 1:  # a lone 6 bits cannot make a byte: the input was cut
        cleaned = cleaned[:-1]
    elif remainder:
        cleaned += b"=" * (4 - remainder)
    try:
        return binascii.a2b_base64(cleaned)
    except binascii.Error:
        return b""


def _uudecode(data: bytes, number: int, defect: _Defect) -> tuple[bytes, str | None]:
    out = bytearray()
    name = None
    lines = iter(data.splitlines())
    for line in lines:
        if line.startswith(b"begin"):
            fields = line.split(b" ", 2)
            if len(fields) == 3:
                name = fields[2].strip().decode("utf-8", "replace")
            break
    else:
        defect(f"Part {number} is declared uuencoded but has no 'begin' line.")
        return data, None
    bad = False
    for line in lines:
        stripped = line.strip()
        if stripped in (b"end", b"`") or not stripped:
            if stripped == b"end":
                break
            continue
        try:
            out += binascii.a2b_uu(line)
        except binascii.Error:
            # the uu module's workaround for encoders that pad lines wrongly
            try:
                length = (((line[0] - 32) & 63) * 4 + 5) // 3
                out += binascii.a2b_uu(line[:length])
            except (binascii.Error, IndexError):
                bad = True
    if bad:
        defect(f"Part {number} has broken uuencoded lines; they were skipped.")
    return bytes(out), name


# --- charsets ----------------------------------------------------------------------------------

# What mail clients really mean by some labels (the WHATWG encoding standard's supersets).
_CHARSET_ALIASES = {
    "iso-8859-1": "cp1252",
    "latin1": "cp1252",
    "latin-1": "cp1252",
    "us-ascii": "ascii",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "ks_c_5601-1987": "cp949",
    "euc-kr": "cp949",
    "shift_jis": "cp932",
    "shift-jis": "cp932",
    "x-sjis": "cp932",
    "iso-8859-9": "cp1254",
    "tis-620": "cp874",
    "utf8": "utf-8",
}
# Codecs that are not charsets a mail can honestly declare, or are slow on large input
_REFUSED_CODECS = frozenset(
    ("punycode", "idna", "raw-unicode-escape", "unicode-escape", "undefined", "palmos")
)
_WESTERN = frozenset(("utf-8", "cp1252", "latin-1", "iso8859-1", "ascii"))
_CHARSET_JUNK = re.compile(r"[^a-z0-9._:+-]")


@functools.lru_cache(maxsize=256)
def _codec(label: str) -> tuple[str | None, bool]:
    """The Python codec for a declared charset label (``None`` if unknown or unsuitable), and
    whether the label was malformed (quotes, spaces or other junk around a known name)."""
    plain = label.strip().lower()
    name = _CHARSET_JUNK.sub("", plain)[:40]
    malformed = name != plain
    name = _CHARSET_ALIASES.get(name, name)
    if not name:
        return None, malformed
    try:
        info = codecs.lookup(name)
        b"".decode(info.name)  # LookupError for bytes-to-bytes codecs such as base64
    except (LookupError, ValueError):
        return None, malformed
    if info.name in _REFUSED_CODECS:
        return None, malformed
    return info.name, malformed


def _decode_text(data: bytes, charset: str | None, what: str, defect: _Defect) -> str:
    """Decode ``data`` in its declared charset, falling back so that it never fails."""
    codec, malformed = _codec(charset) if charset else (None, False)
    text = None
    if charset and codec is None:
        defect(f"The charset of {what} is unknown; read as UTF-8 or Windows-1252.")
    elif malformed:
        defect(f"The charset label of {what} is malformed; read as the charset it names.")
    declared_failed = False
    if codec is not None:
        try:
            text = data.decode(codec)
        except UnicodeDecodeError:
            if codec not in _WESTERN:
                # a wrong byte in Japanese text should cost that character, not the whole text
                defect(f"{_cap(what)} has bytes invalid in its charset; they were replaced.")
                text = data.decode(codec, "replace")
            declared_failed = True
    if text is None:
        try:
            text = data.decode("utf-8")
            if declared_failed:
                defect(f"{_cap(what)} is not valid in its declared charset; read as UTF-8.")
        except UnicodeDecodeError:
            if declared_failed:
                defect(
                    f"{_cap(what)} is valid neither in its declared charset nor in UTF-8; "
                    "read as Windows-1252."
                )
            elif codec is None and not charset:
                defect(f"{_cap(what)} has 8-bit bytes that are not UTF-8; read as Windows-1252.")
            text = _single_byte(data)
    if "\x00" in text:
        text = text.replace("\x00", "")
    return _valid_text(text)


def _single_byte(data: bytes) -> str:
    try:
        return data.decode("cp1252")
    except UnicodeDecodeError:  # the five bytes cp1252 leaves undefined
        return data.decode("latin-1")


def _valid_text(text: str) -> str:
    """``text`` with lone surrogates (from UTF-7/UTF-16 data) replaced: they cannot be stored."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


# --- file names --------------------------------------------------------------------------------

_EXTENSIONS = {
    "text/plain": ".txt",
    "text/html": ".html",
    "text/calendar": ".ics",
    "text/csv": ".csv",
    "text/vcard": ".vcf",
    "text/x-vcard": ".vcf",
    "message/rfc822": ".eml",
    "message/global": ".eml",
    "message/delivery-status": ".txt",
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/gif": ".gif",
    "image/webp": ".webp",
    "image/svg+xml": ".svg",
    "application/pdf": ".pdf",
    "application/zip": ".zip",
    "application/json": ".json",
    "application/xml": ".xml",
    "application/ms-tnef": ".dat",
    "application/vnd.ms-tnef": ".dat",
    "application/pkcs7-signature": ".p7s",
    "application/x-pkcs7-signature": ".p7s",
    "application/pkcs7-mime": ".p7m",
    "application/x-pkcs7-mime": ".p7m",
    "application/pgp-signature": ".asc",
    "application/ics": ".ics",
    "application/msword": ".doc",
    "application/vnd.ms-excel": ".xls",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": ".docx",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": ".xlsx",
    "application/octet-stream": ".bin",
}


def _safe_filename(name: str) -> str:
    """A base name without path parts, controls or trailing dots, at most 255 characters."""
    if not name:
        return ""
    name = _CONTROL.sub("", name)
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = name.strip().rstrip(". ")  # Windows drops trailing dots and spaces anyway
    if not name.strip("."):
        return ""
    if len(name) > MAX_FILENAME_CHARS:
        stem, dot, extension = name.rpartition(".")
        if dot and 0 < len(extension) <= 16:
            name = stem[: MAX_FILENAME_CHARS - len(extension) - 1] + "." + extension
        else:
            name = name[:MAX_FILENAME_CHARS]
    return _valid_text(name)
