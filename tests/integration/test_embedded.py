"""Without CRMSYNC_DATABASE_URL crmsync runs its own PostgreSQL under CRMSYNC_HOME."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "crmsync", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_newcomer_needs_no_database_server(tmp_path: Path) -> None:
    home = tmp_path / "crmsync-home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRMSYNC_")}
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
        assert "not running" in run(env, "db", "stop").stderr
        # the next command starts it again, data intact
        restarted = run(env, "db", "status", "--json")
        assert restarted.returncode == 0, restarted.stderr
        assert json.loads(restarted.stdout)["revision"] == result["revision"]
    finally:
        run(env, "db", "stop")
