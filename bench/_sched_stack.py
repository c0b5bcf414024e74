"""The scheduler bench's stack: Dovecot with hibernation, 10,000 users in bulk, /proc figures.

    stack, started = ensure_stack(dir)          # tests.stackfix: stack/up.sh DIR
    restart_dovecot_hibernating(stack)          # + scale and hibernation settings
    with inotify_instances(20_000): ...         # restored afterwards, also on errors
    users = add_users_bulk(stack, "bsched", 10_000)

Dovecot settings are those of ``../shared/reference/test-stack.md`` (``dovecot-scale.conf`` and
``dovecot-hib.conf``): high-performance login processes, limits raised past 10,000 sessions, and
an IDLE session handed to one ``imap-hibernate`` process after 2 s, so 1,000 IDLE connections
cost one process instead of 1,000. stack/up.sh writes ``dovecot.conf`` on every start, so the
settings are appended to that file and Dovecot is restarted under the same command line (which
is what stack/down.sh recognises it by).

All virtual users are uid ``nobody``: every IDLE session takes an inotify instance of that uid,
and past ``fs.inotify.max_user_instances`` (128 by default) Dovecot silently falls back to
polling and stops hibernating. :func:`inotify_instances` raises it for the run (root only).
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from tests.stackfix import MailUser, Stack, _stackutil

INOTIFY_INSTANCES = Path("/proc/sys/fs/inotify/max_user_instances")

HIBERNATION_CONF = """
# --- appended by bench/_sched_stack.py (scheduler bench): scale + hibernation -------------
mail_max_userip_connections = 20000
default_client_limit = 20000
default_process_limit = 12000
imap_hibernate_timeout = 2s
service imap {
  process_limit = 12000
  unix_listener imap-master {
    mode = 0666
  }
}
service imap-login {
  service_count = 0
  process_min_avail = 2
  client_limit = 10000
}
service stats {
  client_limit = 20000
}
service anvil {
  client_limit = 20000
}
service imap-hibernate {
  client_limit = 12000
  unix_listener imap-hibernate {
    mode = 0666
  }
}
"""


@contextlib.contextmanager
def inotify_instances(wanted: int) -> Iterator[int | None]:
    """Raise fs.inotify.max_user_instances to WANTED for the block; yields the old value
    (None when it could not be read or written: not root, or no such file)."""
    try:
        old = int(INOTIFY_INSTANCES.read_text().strip())
    except (OSError, ValueError):
        yield None
        return
    if old >= wanted:
        yield old
        return
    try:
        INOTIFY_INSTANCES.write_text(f"{wanted}\n")
    except OSError:
        yield None
        return
    try:
        yield old
    finally:
        with contextlib.suppress(OSError):
            INOTIFY_INSTANCES.write_text(f"{old}\n")


def _pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def restart_dovecot_hibernating(stack: Stack, timeout: float = 30.0) -> int:
    """Append the scale and hibernation settings to the stack's dovecot.conf and restart
    Dovecot with them; returns the new master PID (also written where down.sh looks)."""
    conf = stack.dir / "dovecot" / "dovecot.conf"
    text = conf.read_text()
    if "imap_hibernate_timeout" not in text:
        conf.write_text(text + HIBERNATION_CONF)
    check = subprocess.run(
        ["doveconf", "-c", str(conf), "-n"], capture_output=True, text=True, check=False
    )
    if check.returncode != 0:
        raise RuntimeError(f"doveconf refuses the hibernation settings: {check.stderr[-1000:]}")
    pid_file = stack.dir / "pids" / "dovecot.pid"
    old = int(pid_file.read_text().strip())
    if _pid_alive(old):
        os.kill(old, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _pid_alive(old):
            if time.monotonic() > deadline:
                raise RuntimeError(f"Dovecot (pid {old}) did not stop within {timeout:.0f} s")
            time.sleep(0.05)
    log = (stack.dir / "dovecot" / "log" / "stdout.log").open("ab")
    proc = subprocess.Popen(
        ["dovecot", "-F", "-c", str(conf)],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    pid_file.write_text(f"{proc.pid}\n")
    info_path = stack.dir / "stack.json"
    info = json.loads(info_path.read_text())
    info.setdefault("pids", {})["dovecot"] = proc.pid
    info_path.write_text(json.dumps(info, indent=2) + "\n")
    stack.pids["dovecot"] = proc.pid
    _wait_imap(stack, proc, timeout)
    return proc.pid


def _wait_imap(stack: Stack, proc: subprocess.Popen, timeout: float) -> None:
    import imaplib

    probe = (stack.dir / "dovecot" / "probe.secret").read_text().strip()
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(
                f"Dovecot exited ({proc.returncode}); see {stack.dir}/dovecot/log/dovecot.log"
            )
        try:
            client = imaplib.IMAP4(stack.host, stack.imap_port, timeout=5)
            client.login("stack-probe", probe)
            client.logout()
            return
        except (OSError, imaplib.IMAP4.error):
            if time.monotonic() > deadline:
                raise RuntimeError("Dovecot did not accept a login after the restart") from None
            time.sleep(0.1)


def add_users_bulk(stack: Stack, prefix: str, count: int) -> list[MailUser]:
    """COUNT Dovecot users (PREFIX00001...) written in one pass of the users files (not one
    rewrite per user, as stack/adduser.sh does), with their Maildirs made ahead (as Dovecot
    would on the first login), so no client pays the creation."""
    su = _stackutil()
    width = max(5, len(str(count)))
    users = [
        MailUser(name, secrets.token_urlsafe(12), f"{name}@{stack.domain}")
        for name in (f"{prefix}{i:0{width}d}" for i in range(1, count + 1))
    ]
    with su.users_lock(stack.dir):
        table = su._parse_lines(su.dovecot_passwd_path(stack.dir))
        for user in users:
            table[user.username] = f"{{PLAIN}}{user.password}::::::"
        su._write_dovecot_files(stack.dir, table)
    uid = pwd.getpwnam("nobody").pw_uid
    gid = grp.getgrnam("nogroup").gr_gid
    for user in users:
        home = stack.maildir_root / user.username
        for path in (
            home,
            home / "Maildir",
            *(home / "Maildir" / s for s in ("cur", "new", "tmp")),
        ):
            path.mkdir(exist_ok=True)
            os.chown(path, uid, gid)
    return users


def remove_users(stack: Stack, users: list[MailUser]) -> None:
    """Take the bench users out of the users files again (their Maildirs are removed by the
    caller with the stack directory, or left for a --keep run)."""
    su = _stackutil()
    names = {u.username for u in users}
    with su.users_lock(stack.dir):
        table = su._parse_lines(su.dovecot_passwd_path(stack.dir))
        su._write_dovecot_files(stack.dir, {k: v for k, v in table.items() if k not in names})


# ---------------------------------------------------------------------- /proc figures
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def children_map() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            ppid = int(_stat_fields(int(entry.name))[1])
        except (OSError, IndexError, ValueError):
            continue
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def descendants(pid: int, tree: dict[int, list[int]] | None = None) -> list[int]:
    tree = tree if tree is not None else children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(tree.get(p, []))
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU of PID and of its children: the live ones (read from their own
    stat) and the reaped ones (cutime/cstime)."""
    total = 0.0
    for i, p in enumerate(descendants(pid)):
        try:
            f = _stat_fields(p)
        except (OSError, IndexError):
            continue
        # fields after ")": state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14)
        ticks = int(f[11]) + int(f[12]) + (int(f[13]) + int(f[14]) if i == 0 else 0)
        total += ticks / CLOCK_TICKS
    return total


def _status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kb(pid: int) -> int:
    """Current RSS of PID and its live descendants."""
    return sum(_status_kb(p, "VmRSS") for p in descendants(pid))


def hwm_kb(pid: int) -> int:
    """Peak RSS (VmHWM) of PID itself."""
    return _status_kb(pid, "VmHWM")


def pss_kb(pid: int) -> tuple[int, int]:
    """Summed PSS of PID and its descendants (smaps_rollup), and how many processes."""
    total = n = 0
    for p in descendants(pid):
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    n += 1
                    break
        except OSError:
            continue
    return total, n


def process_count(pid: int, name: str) -> int:
    """How many descendants of PID are called NAME (comm)."""
    count = 0
    for p in descendants(pid):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{p}/comm").read_text().strip() == name:
                count += 1
    return count
