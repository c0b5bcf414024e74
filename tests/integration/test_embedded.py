"""Without CRMSYNC_DATABASE_URL crmsync runs its own PostgreSQL under CRMSYNC_HOME."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.clirun import clean_env, run

pytestmark = pytest.mark.integration


def test_newcomer_needs_no_database_server(tmp_path: Path) -> None:
    home = tmp_path / "crmsync-home"
    env = clean_env()
    env["CRMSYNC_HOME"] = str(home)
    try:
        init = run(env, "init", "--json")
        assert init.returncode == 0, init.stderr
        result = json.loads(init.stdout)
        assert result["embedded"] is True
        assert result["revision_before"] is None
        assert (home / "pgdata" / "PG_VERSION").exists()
        assert (home / "secret.key").stat().st_mode & 0o777 == 0o600

        again = run(env, "init", "--json")  # reuses the running server and the schema
        assert json.loads(again.stdout)["changed"] is False

        status = run(env, "status", "--json")
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["database"]["embedded"] is True

        stop = run(env, "db", "stop")
        assert stop.returncode == 0 and "stopped" in stop.stderr
        assert "Warning" not in stop.stderr + init.stderr  # only our own messages
        assert "not running" in run(env, "db", "stop").stderr
        # the next command starts it again, data intact
        restarted = run(env, "db", "status", "--json")
        assert restarted.returncode == 0, restarted.stderr
        assert json.loads(restarted.stdout)["revision"] == result["revision"]
    finally:
        run(env, "db", "stop")


def test_crmsync_run_serves_on_the_embedded_database_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    import signal
    import subprocess
    import sys
    import time

    env = clean_env()
    env["CRMSYNC_HOME"] = str(tmp_path / "crmsync-home")
    try:
        assert run(env, "init").returncode == 0
        proc = subprocess.Popen(
            [sys.executable, "-m", "crmsync", "run", "--concurrency", "2"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 60
            workers = 0
            while workers == 0 and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.5)
                status = run(env, "status", "--json")
                workers = json.loads(status.stdout)["service"]["live_workers"]
            assert workers == 1, "crmsync run did not register a worker within 60 s"
        finally:
            proc.send_signal(signal.SIGTERM)
            _out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "syncing with 2 at a time, push (IMAP IDLE) on" in err and "stopped" in err
        after = json.loads(run(env, "status", "--json").stdout)["service"]
        assert after["live_workers"] == 0  # unregistered on the way out
    finally:
        run(env, "db", "stop")
