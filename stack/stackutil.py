"""Helpers for the stack/*.sh scripts (standard library only).

Used by up.sh, down.sh and adduser.sh, and imported by tests/stackfix, so the user-file
format lives in one place.  Commands (``python stack/stackutil.py CMD ...``):

  pick-ports DIR NAME[=WANTED] ...   print NAME=PORT lines: WANTED if given (must be free),
                                     else the port DIR/stack.json had last time if still free,
                                     else a fresh free port on 127.0.0.1
  wait-ready TIMEOUT SPEC ...        wait until every SPEC is ready; SPEC is
                                     NAME:tcp:PORT:PID or NAME:imap:PORT:PID:USER:PASSFILE
  adduser DIR USER PASSWORD          add or update a user (Dovecot passwd-file + Radicale htpasswd)
  seed DIR FILE                      add every "user:password" line of FILE
  ensure-user-files DIR              create the (empty) user files with the right modes
  ensure-probe-user DIR              create the Dovecot-only readiness user "stack-probe"
  write-info DIR                     write DIR/stack.json and DIR/stack.env from STACKINFO_* env
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shlex
import socket
import sys
import time
from pathlib import Path

HOST = "127.0.0.1"
USERNAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
FORBIDDEN_PASSWORD_CHARS = (":", "\n", "\r", "\0")


class StackError(Exception):
    """A problem the caller should report and stop on."""


# ----------------------------------------------------------------------------- users


def dovecot_passwd_path(stack_dir: Path) -> Path:
    return stack_dir / "dovecot" / "users.passwd"


def radicale_htpasswd_path(stack_dir: Path) -> Path:
    return stack_dir / "radicale" / "users"


def mail_domains(stack_dir: Path) -> list[str]:
    path = stack_dir / "domains"
    if not path.exists():
        return []
    return [d for d in path.read_text().split() if d]


def normalize_username(user: str, domains: list[str]) -> str:
    """Same rule as Dovecot's ``auth_username_format = %Ln``: lower case, local part only.

    A domain, if given, must be one of the stack's local mail domains.
    """
    user = user.strip().lower()
    if "@" in user:
        local, _, domain = user.rpartition("@")
        if domains and domain not in domains:
            raise StackError(f"user {user!r}: domain must be one of {', '.join(domains)}")
        user = local
    if not USERNAME_RE.match(user):
        raise StackError(
            f"invalid user name {user!r}: use 1-64 of a-z 0-9 . _ - (starting with a letter/digit)"
        )
    return user


def check_password(password: str) -> None:
    if not password:
        raise StackError("empty password")
    if any(c in password for c in FORBIDDEN_PASSWORD_CHARS):
        raise StackError("password must not contain ':' or line breaks")


def _parse_lines(path: Path) -> dict[str, str]:
    """user -> rest of line, for 'user:rest' lines; comments and blanks are dropped."""
    users: dict[str, str] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            user, _, rest = line.partition(":")
            users[user] = rest
    return users


def _atomic_write(path: Path, text: str, mode: int, group: str | None = None) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.chmod(tmp, mode)
    if group is not None and os.geteuid() == 0:
        import grp

        with contextlib.suppress(KeyError):
            os.chown(tmp, 0, grp.getgrnam(group).gr_gid)
    os.replace(tmp, path)


@contextlib.contextmanager
def users_lock(stack_dir: Path):
    stack_dir.mkdir(parents=True, exist_ok=True)
    with open(stack_dir / ".users.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def dovecot_dict_path(stack_dir: Path) -> Path:
    return stack_dir / "dovecot" / "users.dict"


def _write_dovecot_files(stack_dir: Path, users: dict[str, str]) -> None:
    """Write users.passwd (passwd-file, the source of truth) and users.dict (read by Dovecot).

    Dovecot's passwd-file driver stats its file at most once per second
    (``passwd_file_sync``: ``if (pw->last_sync_time == ioloop_time) return``), so a user added
    in the same second as any other login stays "unknown user" until the next second.  Its
    dict ``file:`` driver instead re-reads whenever the inode changes, which an atomic rename
    guarantees, so Dovecot authenticates from users.dict and sees every change at once.
    """
    stack_dir = Path(stack_dir)
    passwd = "".join(f"{u}:{rest}\n" for u, rest in users.items())
    _atomic_write(dovecot_passwd_path(stack_dir), passwd, 0o640, group="dovecot")
    lines = []
    for user, rest in users.items():
        password = rest.split(":", 1)[0]
        lines.append(f"shared/passdb/{user}\n{json.dumps({'password': password})}\n")
        lines.append(f"shared/userdb/{user}\n{{}}\n")
    _atomic_write(dovecot_dict_path(stack_dir), "".join(lines), 0o640, group="dovecot")


def _write_htpasswd(path: Path, users: dict[str, str]) -> None:
    _atomic_write(path, "".join(f"{u}:{p}\n" for u, p in users.items()), 0o600)


def add_user(stack_dir: Path, user: str, password: str, *, radicale: bool = True) -> str:
    """Add or update USER for Dovecot (users.passwd + users.dict) and Radicale (htpasswd).

    Safe while the servers run: the change is visible to the next login at once.  Returns the
    stored (normalized) user name.
    """
    stack_dir = Path(stack_dir)
    name = normalize_username(user, mail_domains(stack_dir))
    check_password(password)
    with users_lock(stack_dir):
        dpath = dovecot_passwd_path(stack_dir)
        dpath.parent.mkdir(parents=True, exist_ok=True)
        dusers = _parse_lines(dpath)
        dusers[name] = f"{{PLAIN}}{password}::::::"
        _write_dovecot_files(stack_dir, dusers)
        if radicale:
            rpath = radicale_htpasswd_path(stack_dir)
            rpath.parent.mkdir(parents=True, exist_ok=True)
            rusers = _parse_lines(rpath)
            rusers[name] = password
            _write_htpasswd(rpath, rusers)
    return name


def check_dovecot_password(passwd_file: Path, user: str, password: str) -> bool:
    """Check USER/PASSWORD against a Dovecot passwd-file of {PLAIN} entries."""
    import hmac

    try:
        users = _parse_lines(Path(passwd_file))
    except OSError:
        return False
    stored = users.get(user)
    if stored is None:
        return False
    field = stored.split(":", 1)[0]
    if not field.startswith("{PLAIN}"):
        return False
    return hmac.compare_digest(field[len("{PLAIN}") :].encode(), password.encode())


def ensure_user_files(stack_dir: Path) -> None:
    """Create the user files, and rebuild users.dict from users.passwd (the source of truth,
    which may have been edited by hand while the stack was down)."""
    with users_lock(stack_dir):
        (stack_dir / "dovecot").mkdir(parents=True, exist_ok=True)
        _write_dovecot_files(stack_dir, _parse_lines(dovecot_passwd_path(stack_dir)))
        rpath = radicale_htpasswd_path(stack_dir)
        if not rpath.exists():
            _write_htpasswd(rpath, {})


PROBE_USER = "stack-probe"


def ensure_probe_user(stack_dir: Path) -> None:
    """A Dovecot-only user that up.sh logs in as to prove IMAP is ready."""
    import secrets

    secret = Path(stack_dir) / "dovecot" / "probe.secret"
    if not secret.exists() or not secret.read_text().strip():
        _atomic_write(secret, secrets.token_urlsafe(16) + "\n", 0o600)
    password = secret.read_text().strip()
    stored = _parse_lines(dovecot_passwd_path(Path(stack_dir))).get(PROBE_USER, "")
    if not stored.startswith(f"{{PLAIN}}{password}:"):
        add_user(Path(stack_dir), PROBE_USER, password, radicale=False)


def seed_users(stack_dir: Path, users_file: Path) -> list[str]:
    added = []
    for n, line in enumerate(Path(users_file).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if ":" not in line:
            raise StackError(f"{users_file}:{n}: expected 'username:password'")
        user, _, password = line.partition(":")
        try:
            added.append(add_user(stack_dir, user, password))
        except StackError as e:
            raise StackError(f"{users_file}:{n}: {e}") from None
    return added


# ----------------------------------------------------------------------------- ports


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # SO_REUSEADDR: a port in TIME_WAIT counts as free (the servers set it too), a port
        # with a listener does not (Linux refuses the bind then).
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def pick_ports(stack_dir: Path, specs: list[str]) -> dict[str, int]:
    previous: dict[str, int] = {}
    info = Path(stack_dir) / "stack.json"
    if info.exists():
        with contextlib.suppress(ValueError, OSError, AttributeError):
            previous = {k: int(v) for k, v in json.loads(info.read_text())["ports"].items()}
    chosen: dict[str, int] = {}
    holders: list[socket.socket] = []
    try:
        for spec in specs:
            name, _, wanted = spec.partition("=")
            if wanted:
                port = int(wanted)
                if not port_is_free(port):
                    raise StackError(f"port {port} requested for {name} is in use")
            elif (
                previous.get(name)
                and previous[name] not in chosen.values()
                and port_is_free(previous[name])
            ):
                port = previous[name]
            else:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                holders.append(s)  # keep it bound so the next pick differs
                s.bind((HOST, 0))
                port = s.getsockname()[1]
            if port in chosen.values():
                raise StackError(f"port {port} chosen twice ({name})")
            chosen[name] = port
    finally:
        for s in holders:
            s.close()
    return chosen


# ----------------------------------------------------------------------------- readiness


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child counts as dead
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _tcp_ready(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def _imap_login_ok(port: int, user: str, password: str) -> bool:
    import imaplib

    try:
        with imaplib.IMAP4(HOST, port, timeout=2) as imap:
            imap.login(user, password)
            imap.logout()
        return True
    except (OSError, imaplib.IMAP4.error):
        return False


def wait_ready(timeout: float, specs: list[str]) -> list[str]:
    """Return the names that did not become ready (empty list = all ready)."""
    pending = {}
    for spec in specs:
        parts = spec.split(":")
        pending[parts[0]] = parts
    deadline = time.monotonic() + timeout
    failed: list[str] = []
    while pending:
        for name, parts in list(pending.items()):
            kind, port, pid = parts[1], int(parts[2]), int(parts[3])
            if pid and not _pid_alive(pid):
                failed.append(f"{name} (process {pid} exited)")
                del pending[name]
                continue
            if kind == "tcp":
                ok = _tcp_ready(port)
            elif kind == "imap":
                ok = _tcp_ready(port) and _imap_login_ok(
                    port, parts[4], Path(parts[5]).read_text().strip()
                )
            else:
                raise StackError(f"unknown readiness kind {kind!r}")
            if ok:
                del pending[name]
        if not pending:
            break
        if time.monotonic() > deadline:
            failed.extend(f"{name} (not ready after {timeout:g}s)" for name in pending)
            break
        time.sleep(0.02)
    return failed


# ----------------------------------------------------------------------------- info files

INFO_KEYS = {
    # stack.json key: (STACKINFO_ env var, type, stack.env name)
    "dir": ("DIR", str, "STACK_DIR"),
    "host": ("HOST", str, "STACK_HOST"),
    "imap_host": ("HOST", str, "STACK_IMAP_HOST"),
    "imap_port": ("IMAP_PORT", int, "STACK_IMAP_PORT"),
    "lmtp_port": ("LMTP_PORT", int, "STACK_LMTP_PORT"),
    "smtp_host": ("HOST", str, "STACK_SMTP_HOST"),
    "smtp_port": ("SMTP_PORT", int, "STACK_SMTP_PORT"),
    "radicale_port": ("RADICALE_PORT", int, "STACK_RADICALE_PORT"),
    "radicale_url": ("RADICALE_URL", str, "STACK_RADICALE_URL"),
    "postgres_port": ("PG_PORT", int, "STACK_POSTGRES_PORT"),
    "postgres_url": ("POSTGRES_URL", str, "STACK_POSTGRES_URL"),
    "postgres_dsn": ("POSTGRES_DSN", str, "STACK_POSTGRES_DSN"),
    "dovecot_passwd_file": ("DOVECOT_PASSWD", str, "STACK_DOVECOT_PASSWD_FILE"),
    "radicale_htpasswd_file": ("RADICALE_HTPASSWD", str, "STACK_RADICALE_HTPASSWD_FILE"),
    "mail_domains": ("MAIL_DOMAINS", list, "STACK_MAIL_DOMAINS"),
    "outbox_dir": ("OUTBOX_DIR", str, "STACK_OUTBOX_DIR"),
    "maildir_root": ("MAILDIR_ROOT", str, "STACK_MAILDIR_ROOT"),
    "smtp_log": ("SMTP_LOG", str, "STACK_SMTP_LOG"),
    "dovecot_log": ("DOVECOT_LOG", str, "STACK_DOVECOT_LOG"),
    "radicale_log": ("RADICALE_LOG", str, "STACK_RADICALE_LOG"),
    "postgres_log": ("POSTGRES_LOG", str, "STACK_POSTGRES_LOG"),
    "dovecot_pid": ("DOVECOT_PID", int, "STACK_DOVECOT_PID"),
    "smtp_pid": ("SMTP_PID", int, "STACK_SMTP_PID"),
    "radicale_pid": ("RADICALE_PID", int, "STACK_RADICALE_PID"),
    "postgres_pid": ("POSTGRES_PID", int, "STACK_POSTGRES_PID"),
}


def write_info(stack_dir: Path) -> None:
    env = os.environ
    info: dict[str, object] = {}
    for key, (var, typ, _) in INFO_KEYS.items():
        raw = env[f"STACKINFO_{var}"]
        info[key] = raw.split() if typ is list else typ(raw)
    info["ports"] = {
        "imap": info["imap_port"],
        "lmtp": info["lmtp_port"],
        "smtp": info["smtp_port"],
        "radicale": info["radicale_port"],
        "postgres": info["postgres_port"],
    }
    info["pids"] = {
        "dovecot": info["dovecot_pid"],
        "smtp": info["smtp_pid"],
        "radicale": info["radicale_pid"],
        "postgres": info["postgres_pid"],
    }
    info["started_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    stack_dir = Path(stack_dir)
    _atomic_write(stack_dir / "stack.json", json.dumps(info, indent=2) + "\n", 0o644)
    lines = ["# generated by stack/up.sh; source it from a shell: . stack.env"]
    for key, (_, typ, name) in INFO_KEYS.items():
        value = info[key]
        text = " ".join(value) if typ is list else str(value)  # type: ignore[arg-type]
        lines.append(f"{name}={shlex.quote(text)}")
    _atomic_write(stack_dir / "stack.env", "\n".join(lines) + "\n", 0o644)


# ----------------------------------------------------------------------------- CLI


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, args = argv[0], argv[1:]
    try:
        if cmd == "pick-ports":
            for name, port in pick_ports(Path(args[0]), args[1:]).items():
                print(f"{name}={port}")
        elif cmd == "wait-ready":
            failed = wait_ready(float(args[0]), args[1:])
            for item in failed:
                print(item)
            return 1 if failed else 0
        elif cmd == "adduser":
            if len(args) != 3:
                raise StackError("usage: adduser DIR USER PASSWORD")
            print(add_user(Path(args[0]), args[1], args[2]))
        elif cmd == "seed":
            for name in seed_users(Path(args[0]), Path(args[1])):
                print(name)
        elif cmd == "ensure-user-files":
            ensure_user_files(Path(args[0]))
        elif cmd == "ensure-probe-user":
            ensure_probe_user(Path(args[0]))
        elif cmd == "write-info":
            write_info(Path(args[0]))
        else:
            raise StackError(f"unknown command {cmd!r}")
    except StackError as e:
        print(f"stackutil: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
