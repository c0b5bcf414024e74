"""When each mailbox syncs, who syncs it, and what happens when it fails (issue 5).

- ``outcome``: a finished run → the mailbox's next run, or its disabling and alerts, written in
  the same transaction as the run's outcome (the policy itself is ``crmsync.core.schedule``).
- ``dispatch``: due mailboxes → sync jobs on the queue, each mailbox at most once; "sync now".
- ``jobs``: the Procrastinate app and the sync task.
- ``worker``: one worker process (``crmsync worker`` / ``crmsync run``): jobs, dispatching,
  housekeeping, push.
- ``metrics``: Prometheus metrics of all of it.

docs/scheduling.md describes the whole; the schedule lives in ``mailbox.next_sync_at`` (indexed),
and the queue holds only due work, so a "sync now" is never stuck behind a job scheduled for later.
"""
