"""SMTP server of the test stack (aiosmtpd), started by stack/up.sh.

* Listens on 127.0.0.1 only.  AUTH PLAIN/LOGIN is offered without TLS (loopback test server)
  and checked against the Dovecot passwd-file; unauthenticated mail is accepted too.
* Recipients in a local mail domain are checked at RCPT time against Dovecot LMTP (so an
  unknown user gets LMTP's own ``550 5.1.1`` back) and delivered to LMTP after DATA, one
  recipient per LMTP transaction (``smtplib.LMTP`` cannot read per-recipient replies).
* Every other recipient is "the outside world": the message is written once to
  ``OUTBOX/<time_ns>-<pid>-<seq>.eml`` (the bytes as received) plus a ``.json`` sidecar with the
  envelope.  The ``.json`` is written last; a message is complete once its ``.json`` exists.
* One log line per accepted message (peer, auth user, from, rcpts, message-id, size).
  Passwords are never logged (aiosmtpd's own per-command log, which would show the AUTH
  line, is kept at WARNING).

Run: ``python stack/smtp_relay.py --config DIR/smtp/relay.json``; stop with SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
import smtplib
import sys
import time
from dataclasses import dataclass
from email import policy
from email.parser import BytesParser
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stackutil import StackError, check_dovecot_password, normalize_username

log = logging.getLogger("stack.smtp")

# Map of MAIL FROM parameters to the LMTP extension that must be present to pass them on.
_MAIL_PARAM_EXT = {"body": "8bitmime", "smtputf8": "smtputf8", "size": "size"}


@dataclass(frozen=True)
class Config:
    host: str
    port: int
    lmtp_host: str
    lmtp_port: int
    passwd_file: Path
    domains: tuple[str, ...]
    outbox: Path
    log_file: Path
    hostname: str = "smtp.stack.test"
    data_size_limit: int = 50 * 1024 * 1024
    lmtp_timeout: float = 30.0

    @classmethod
    def load(cls, path: Path) -> Config:
        raw = json.loads(Path(path).read_text())
        return cls(
            host=raw["host"],
            port=int(raw["port"]),
            lmtp_host=raw["lmtp_host"],
            lmtp_port=int(raw["lmtp_port"]),
            passwd_file=Path(raw["passwd_file"]),
            domains=tuple(d.lower() for d in raw["domains"]),
            outbox=Path(raw["outbox"]),
            log_file=Path(raw["log_file"]),
        )


def _clean(value: Any) -> str:
    """One-line, printable rendering for the log (no log injection via CR/LF)."""
    text = value if isinstance(value, str) else str(value)
    return "".join(c if c.isprintable() else "?" for c in text)


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower() if "@" in address else ""


def _message_id(content: bytes) -> str:
    try:
        headers = BytesParser(policy=policy.compat32).parsebytes(content, headersonly=True)
        return str(headers.get("Message-ID", "") or "").strip()
    except Exception:
        return ""


def _lmtp_options(lmtp: smtplib.LMTP, options: list[str]) -> list[str]:
    keep = []
    for opt in options:
        key = opt.split("=", 1)[0].lower()
        ext = _MAIL_PARAM_EXT.get(key)
        if ext and lmtp.has_extn(ext):
            keep.append(opt)
    return keep


class Relay:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self._seq = itertools.count(1)
        cfg.outbox.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ AUTH
    def authenticate(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login = auth_data.login.decode("utf-8", "replace")
        password = auth_data.password.decode("utf-8", "replace")
        try:
            user = normalize_username(login, list(self.cfg.domains))
        except StackError:
            user = None
        if user and check_dovecot_password(self.cfg.passwd_file, user, password):
            log.info("auth ok peer=%s mech=%s user=%s", _peer(session), mechanism, user)
            return AuthResult(success=True, auth_data=user)
        log.warning(
            "auth failed peer=%s mech=%s login=%s", _peer(session), mechanism, _clean(login)
        )
        return AuthResult(success=False, handled=False)

    # ------------------------------------------------------------------ LMTP
    def _lmtp(self) -> smtplib.LMTP:
        lmtp = smtplib.LMTP(self.cfg.lmtp_host, self.cfg.lmtp_port, timeout=self.cfg.lmtp_timeout)
        lmtp.ehlo_or_helo_if_needed()
        return lmtp

    def _probe(self, mail_from: str, options: list[str], rcpt: str) -> tuple[int, str]:
        try:
            with self._lmtp() as lmtp:
                code, msg = lmtp.mail(mail_from, _lmtp_options(lmtp, options))
                if code == 250:
                    code, msg = lmtp.rcpt(rcpt)
                with contextlib.suppress(smtplib.SMTPException, OSError):
                    lmtp.rset()
                return code, msg.decode("utf-8", "replace")
        except (smtplib.SMTPException, OSError) as e:
            log.error("lmtp probe failed rcpt=%s: %s", _clean(rcpt), e)
            return 451, "4.4.0 local delivery (LMTP) unavailable"

    def _deliver(
        self, mail_from: str, options: list[str], rcpts: list[str], content: bytes
    ) -> dict[str, tuple[int, str]]:
        """Deliver to each local recipient in its own LMTP transaction."""
        results: dict[str, tuple[int, str]] = {}
        try:
            with self._lmtp() as lmtp:
                opts = _lmtp_options(lmtp, options)
                for rcpt in rcpts:
                    try:
                        lmtp.sendmail(mail_from, [rcpt], content, mail_options=opts)
                        results[rcpt] = (250, "2.0.0 delivered")
                    except smtplib.SMTPRecipientsRefused as e:
                        code, msg = e.recipients[rcpt]
                        results[rcpt] = (code, msg.decode("utf-8", "replace"))
                    except smtplib.SMTPResponseException as e:
                        err = e.smtp_error
                        text = err.decode("utf-8", "replace") if isinstance(err, bytes) else err
                        results[rcpt] = (e.smtp_code, text)
                        with contextlib.suppress(smtplib.SMTPException, OSError):
                            lmtp.rset()
        except (smtplib.SMTPException, OSError) as e:
            log.error("lmtp delivery failed: %s", e)
        for rcpt in rcpts:
            results.setdefault(rcpt, (451, "4.4.0 local delivery (LMTP) failed"))
        return results

    # ------------------------------------------------------------------ SMTP hooks
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if "@" not in address:
            return "553 5.1.3 recipient must be a full address (user@domain)"
        if _domain(address) in self.cfg.domains:
            code, msg = await asyncio.to_thread(
                self._probe, envelope.mail_from or "", list(envelope.mail_options), address
            )
            if code != 250:
                log.info(
                    "rcpt rejected peer=%s rcpt=%s code=%s", _peer(session), _clean(address), code
                )
                return f"{code} {msg}"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        content: bytes = envelope.content  # decode_data=False: bytes as received
        mail_from = envelope.mail_from or ""
        local = [r for r in envelope.rcpt_tos if _domain(r) in self.cfg.domains]
        external = [r for r in envelope.rcpt_tos if _domain(r) not in self.cfg.domains]
        message_id = _message_id(content)
        auth_user = session.auth_data if session.authenticated else None

        if local:
            results = await asyncio.to_thread(
                self._deliver, mail_from, list(envelope.mail_options), local, content
            )
            failed = {r: res for r, res in results.items() if res[0] != 250}
            if failed:
                rcpt, (code, msg) = next(iter(failed.items()))
                log.error(
                    "delivery failed peer=%s from=<%s> failed=%s message-id=%s code=%s msg=%s",
                    _peer(session),
                    _clean(mail_from),
                    _clean(",".join(failed)),
                    _clean(message_id),
                    code,
                    _clean(msg),
                )
                code = code if 400 <= code < 600 else 451
                return f"{code} delivery to {rcpt} failed: {msg}"

        outbox_name = ""
        if external:
            outbox_name = await asyncio.to_thread(
                self._write_outbox, session, envelope, external, local, message_id, auth_user
            )

        log.info(
            "accepted peer=%s auth=%s from=<%s> rcpts=%s message-id=%s size=%d local=%s outbox=%s",
            _peer(session),
            _clean(auth_user or "-"),
            _clean(mail_from),
            _clean(",".join(f"<{r}>" for r in envelope.rcpt_tos)),
            _clean(message_id or "-"),
            len(content),
            len(local),
            outbox_name or "-",
        )
        return "250 2.0.0 OK: queued"

    def _write_outbox(self, session, envelope, external, local, message_id, auth_user) -> str:
        base = f"{time.time_ns()}-{os.getpid()}-{next(self._seq):06d}"
        eml = self.cfg.outbox / f"{base}.eml"
        meta = {
            "eml": eml.name,
            "mail_from": envelope.mail_from or "",
            "rcpt_tos": external,
            "local_rcpt_tos": local,
            "all_rcpt_tos": list(envelope.rcpt_tos),
            "mail_options": list(envelope.mail_options),
            "auth_user": auth_user,
            "peer": _peer(session),
            "message_id": message_id,
            "size": len(envelope.content),
            "received_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        tmp = self.cfg.outbox / f".{base}.eml.tmp"
        tmp.write_bytes(envelope.content)
        os.replace(tmp, eml)
        tmp = self.cfg.outbox / f".{base}.json.tmp"
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
        os.replace(tmp, self.cfg.outbox / f"{base}.json")
        return eml.name


def _peer(session) -> str:
    peer = getattr(session, "peer", None)
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return _clean(peer)


async def serve(cfg: Config) -> None:
    loop = asyncio.get_running_loop()
    relay = Relay(cfg)

    def factory() -> SMTP:
        return SMTP(
            relay,
            hostname=cfg.hostname,  # explicit: the default does a (possibly slow) DNS lookup
            ident="crmsync test stack SMTP",
            data_size_limit=cfg.data_size_limit,
            enable_SMTPUTF8=True,
            decode_data=False,
            auth_required=False,
            auth_require_tls=False,  # loopback test server: AUTH without TLS on purpose
            authenticator=relay.authenticate,
            loop=loop,
        )

    server = await loop.create_server(factory, host=cfg.host, port=cfg.port, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "listening on %s:%d (lmtp %s:%d, local domains %s, outbox %s)",
        cfg.host,
        cfg.port,
        cfg.lmtp_host,
        cfg.lmtp_port,
        ",".join(cfg.domains),
        cfg.outbox,
    )
    await stop.wait()
    log.info("stopping")
    server.close()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(server.wait_closed(), timeout=2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, type=Path, help="relay.json written by up.sh")
    args = parser.parse_args()
    cfg = Config.load(args.config)
    cfg.log_file.parent.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        filename=cfg.log_file,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
    )
    # aiosmtpd logs every command line at INFO, "AUTH PLAIN <credentials>" included.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    asyncio.run(serve(cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
