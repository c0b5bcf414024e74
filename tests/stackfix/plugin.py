"""pytest fixtures for the real-server stack.  Enable in tests/conftest.py:

    pytest_plugins = ["tests.dbfix", "tests.stackfix.plugin"]

Fixtures:
  stack               (session)  the running Stack in $CRMSYNC_TEST_STACK_DIR (default
                                 REPO/.stack/test), started with stack/up.sh if needed.
  mail_user           (function) a fresh user (username, password, address) that exists in
                                 Dovecot and Radicale.
  stack_user_factory  (function) call it for more fresh users.

Stopping: a stack that a test run started is stopped when the last test run using it ends
(several pytest processes, e.g. xdist workers or two people's runs, may share it; each holds a
lease in DIR/sessions/).  A stack started by hand with stack/up.sh is never stopped by pytest.
CRMSYNC_TEST_STACK_KEEP=1 leaves it running for faster re-runs (stop: stack/down.sh DIR).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from . import (
    MailUser,
    Stack,
    StackStartError,
    _pid_alive,
    ensure_stack,
    stack_dir_for_tests,
    stop_stack,
)

STARTED_MARKER = "started-by-pytest"


@contextlib.contextmanager
def _sessions_lock(stack_dir: Path) -> Iterator[Path]:
    sessions = stack_dir / "sessions"
    sessions.mkdir(parents=True, exist_ok=True)
    with open(stack_dir / ".sessions.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield sessions
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _live_leases(sessions: Path) -> list[Path]:
    live = []
    for lease in sessions.iterdir():
        pid = lease.name.split("-", 1)[0]
        if pid.isdigit() and _pid_alive(int(pid)):
            live.append(lease)
        else:
            lease.unlink(missing_ok=True)  # a crashed run's lease
    return live


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    stack_dir = stack_dir_for_tests()
    lease_name = f"{os.getpid()}-{secrets.token_hex(4)}"
    with _sessions_lock(stack_dir) as sessions:
        (sessions / lease_name).touch()
        try:
            running, started = ensure_stack(stack_dir)
        except StackStartError as e:
            (sessions / lease_name).unlink(missing_ok=True)
            pytest.fail(str(e), pytrace=False)
        if started:
            (stack_dir / STARTED_MARKER).touch()
    try:
        yield running
    finally:
        with _sessions_lock(stack_dir) as sessions:
            (sessions / lease_name).unlink(missing_ok=True)
            marker = stack_dir / STARTED_MARKER
            keep = bool(os.environ.get("CRMSYNC_TEST_STACK_KEEP"))
            if not keep and marker.exists() and not _live_leases(sessions):
                marker.unlink()
                stop_stack(stack_dir)


@pytest.fixture
def stack_user_factory(stack: Stack) -> Callable[..., MailUser]:
    return stack.new_user


@pytest.fixture
def mail_user(stack: Stack) -> MailUser:
    return stack.new_user()
