"""TLS: imaps:// with certificate verification, STARTTLS when offered, and TLS failures.

The stack's Dovecot speaks clear text only, so implicit TLS is tested through the fault proxy
terminating TLS in front of it (with a certificate from a throw-away CA made here), and STARTTLS
against a tiny scripted IMAP server that offers it.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from crmsync.mail.imap import ImapSession, TlsFailure
from crmsync.secrets import Secret
from tests.netproxy import FaultProxy
from tests.stackfix import MailUser, Stack


@dataclass(frozen=True)
class Pki:
    ca_file: Path
    cert_file: Path
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA and a server certificate for 127.0.0.1 (no other name)."""
    folder = tmp_path_factory.mktemp("pki")
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("crmsync test CA"))
        .issuer_name(_name("crmsync test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.OID_SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pki = Pki(folder / "ca.pem", folder / "server.pem", folder / "server.key")
    pki.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    pki.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pki.key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return pki


# ---------------------------------------------------------------------- implicit TLS (imaps://)
@pytest.fixture
def tls_front(stack: Stack, pki: Pki) -> Iterator[FaultProxy]:
    with FaultProxy((stack.host, stack.imap_port), server_ssl=pki.server_context()) as proxy:
        yield proxy


@pytest.mark.integration
def test_imaps_with_a_trusted_certificate_works(
    tls_front: FaultProxy, pki: Pki, mail_user: MailUser
) -> None:
    url = f"imaps://127.0.0.1:{tls_front.port}"
    secret = Secret(mail_user.password)
    with ImapSession(url, mail_user.username, secret, ssl_context=pki.client_context()) as imap:
        assert imap.select("INBOX").exists == 0
    assert b"LOGIN" in tls_front.captured_to_server()  # (decrypted by the proxy)


@pytest.mark.integration
def test_imaps_with_an_untrusted_certificate_fails_before_login(
    tls_front: FaultProxy, mail_user: MailUser
) -> None:
    url = f"imaps://127.0.0.1:{tls_front.port}"
    with pytest.raises(TlsFailure) as caught:
        ImapSession(url, mail_user.username, Secret(mail_user.password), timeout=5).open()
    assert "is not trusted" in str(caught.value) and not caught.value.transient
    assert tls_front.bytes_to_server == 0  # nothing, the password least of all, was sent


@pytest.mark.integration
def test_imaps_with_the_wrong_host_name_fails(
    tls_front: FaultProxy, pki: Pki, mail_user: MailUser
) -> None:
    # the certificate names 127.0.0.1 only; "localhost" resolves to it but does not match
    url = f"imaps://localhost:{tls_front.port}"
    session = ImapSession(
        url, mail_user.username, Secret(mail_user.password), ssl_context=pki.client_context()
    )
    with pytest.raises(TlsFailure, match="not trusted"):
        session.open()


@pytest.mark.integration
def test_imaps_to_a_clear_text_port_is_a_tls_failure(stack: Stack, mail_user: MailUser) -> None:
    url = f"imaps://{stack.host}:{stack.imap_port}"
    with pytest.raises(TlsFailure, match="check that the port and the scheme"):
        ImapSession(url, mail_user.username, Secret(mail_user.password), timeout=5).open()


# ---------------------------------------------------------------------- STARTTLS (imap://)
@dataclass
class ScriptedImapServer:
    """Just enough IMAP for policy tests: greeting, CAPABILITY, STARTTLS, LOGIN, LOGOUT.

    With a ``context`` it offers STARTTLS (and LOGINDISABLED before it); ``greeting`` and
    ``login_reply`` script the answers (also used by test_imap_faults).
    """

    context: ssl.SSLContext | None = None
    greeting: bytes = b""
    login_reply: bytes = b"OK logged in"
    port: int = 0
    commands: list[tuple[bool, str]] = field(default_factory=list)  # (over TLS?, command)
    _listener: socket.socket | None = None
    _thread: threading.Thread | None = None

    def __enter__(self) -> ScriptedImapServer:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(10)
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve_one, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._listener is not None and self._thread is not None
        self._listener.close()
        self._thread.join(10)

    def _serve_one(self) -> None:
        assert self._listener is not None
        try:
            conn, _ = self._listener.accept()
        except OSError:
            return
        conn.settimeout(10)
        sock: socket.socket = conn
        tls = False
        caps = b"IMAP4rev1 STARTTLS LOGINDISABLED" if self.context else b"IMAP4rev1 AUTH=PLAIN"
        try:
            sock.sendall(self.greeting or b"* OK [CAPABILITY " + caps + b"] scripted server\r\n")
            reader = sock.makefile("rb")
            while True:
                line = reader.readline()
                if not line:
                    return
                tag, _, rest = line.rstrip(b"\r\n").partition(b" ")
                command = rest.split(b" ", 1)[0].upper()
                self.commands.append((tls, command.decode()))
                if command == b"CAPABILITY":
                    sock.sendall(b"* CAPABILITY " + caps + b"\r\n" + tag + b" OK done\r\n")
                elif command == b"STARTTLS" and self.context and not tls:
                    sock.sendall(tag + b" OK begin TLS\r\n")
                    sock = self.context.wrap_socket(sock, server_side=True)
                    reader = sock.makefile("rb")
                    tls, caps = True, b"IMAP4rev1 AUTH=PLAIN"
                elif command == b"LOGIN" and (tls or not self.context):
                    sock.sendall(tag + b" " + self.login_reply + b"\r\n")
                elif command == b"LOGOUT":
                    sock.sendall(b"* BYE bye\r\n" + tag + b" OK logged out\r\n")
                    return
                else:
                    sock.sendall(tag + b" NO not here\r\n")
        except (OSError, ssl.SSLError):
            return
        finally:
            sock.close()


def test_starttls_is_used_when_offered(pki: Pki) -> None:
    with ScriptedImapServer(pki.server_context()) as server:
        url = f"imap://127.0.0.1:{server.port}"
        with ImapSession(url, "anna", Secret("pw-1234"), ssl_context=pki.client_context()):
            pass
    assert (False, "STARTTLS") in server.commands
    assert (True, "LOGIN") in server.commands
    assert (False, "LOGIN") not in server.commands


def test_starttls_with_an_untrusted_certificate_never_logs_in(pki: Pki) -> None:
    with ScriptedImapServer(pki.server_context()) as server:
        url = f"imap://127.0.0.1:{server.port}"
        with pytest.raises(TlsFailure, match="is not trusted"):
            ImapSession(url, "anna", Secret("pw-1234"), timeout=5).open()
    assert [c for _, c in server.commands if c == "LOGIN"] == []
