"""Running the crmsync command line as a person does: a subprocess with its own environment."""

from __future__ import annotations

import os
import subprocess
import sys

CLI_TIMEOUT = 180  # seconds; the first embedded-database start is the slowest command


def clean_env(**overrides: str) -> dict[str, str]:
    """This process's environment without any CRMSYNC_* setting, plus ``overrides``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRMSYNC_")}
    env.update(overrides)
    return env


def run(env: dict[str, str], *args: str, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "crmsync", *args],
        env=env,
        capture_output=True,
        text=True,
        input=input,
        timeout=CLI_TIMEOUT,
        check=False,
    )
