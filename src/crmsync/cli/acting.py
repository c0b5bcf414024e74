"""Who a CLI command acts as.

Without ``--as`` a command acts as the CLI operator: someone with shell access to the service's
configuration and database URL, trusted like a database administrator; the audit log records
``cli:<os user>``. With ``--as USER`` it acts as that CRM user: their security roles decide, a
denial names the missing privilege, and the audit log records the user.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import typer
from sqlalchemy.orm import Session

from crmsync.admin.mailboxes import find_owner
from crmsync.crm.audit import Actor
from crmsync.crm.records import User
from crmsync.crm.security import Decision, Principal, load_principal
from crmsync.errors import InvalidInput

Gate = Callable[[Principal], Decision]

ActAs = Annotated[
    str | None,
    typer.Option("--as", help="Act as this CRM user (their privileges apply; audited as them)."),
]


def acting_user(session: Session, as_user: str) -> User:
    owner = find_owner(session, as_user)
    if not isinstance(owner, User):
        raise InvalidInput(f"--as needs a user, and {as_user!r} is a {owner.record_type}")
    return owner


def acting_actor(session: Session, as_user: str | None, *, gate: Gate) -> Actor:
    """The actor for the audit log, after the security gate allowed it when acting as a user.

    ``gate`` is one of crmsync.crm.security's ``may_*`` checks, so the CLI asks exactly what
    every other face asks (including the depth a privilege needs)."""
    if as_user is None:
        return Actor.cli_operator()
    user = acting_user(session, as_user)
    gate(load_principal(session, user.id)).or_raise()
    return Actor(name=f"{user.name} ({user.username})", user_id=user.id)
