"""One incoming sync of one mailbox in a child process, for the crash tests
(tests/integration/test_incoming_robustness.py), which SIGKILL it at chosen moments.

    CRMSYNC_CHILD_SECRET_KEY=<fernet key> python -m tests.integration._sync_child \\
        DATABASE_URL MAILBOX_ID HOME [BATCH_SIZE]

Progress goes to stdout, one line each, flushed: ``started <folder> <count>`` when a folder's
undecided messages are known, ``advanced <count>`` after each committed batch, and
``done <json report>`` at the end. Nothing else is printed on stdout (logs go to stderr).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import uuid
from pathlib import Path

import structlog

from crmsync.config import Settings
from crmsync.db import make_engine
from crmsync.secrets import SecretBox
from crmsync.sync.incoming import sync_mailbox


class _Progress:
    def folder_started(self, mailbox: str, folder: str, total: int) -> None:
        print(f"started {folder} {total}", flush=True)

    def advanced(self, count: int) -> None:
        print(f"advanced {count}", flush=True)


def main(argv: list[str]) -> int:
    url, mailbox_id, home = argv[0], uuid.UUID(argv[1]), Path(argv[2])
    batch_size = int(argv[3]) if len(argv) > 3 else 200
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))
    box = SecretBox(
        Settings(
            home=home,
            database_url=url,
            secret_keys=(os.environ["CRMSYNC_CHILD_SECRET_KEY"],),
            log_level="warning",
            log_format="console",
        )
    )
    engine = make_engine(url)
    report = sync_mailbox(engine, mailbox_id, box=box, progress=_Progress(), batch_size=batch_size)
    engine.dispose()
    print(
        "done "
        + json.dumps(
            {
                "ok": report.ok,
                "busy": report.busy,
                "error": report.error,
                "tracked": report.tracked,
                "seen": report.seen,
                "quarantined": report.quarantined,
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
