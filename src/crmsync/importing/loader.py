"""Writing validated rows to the database, type by type in dependency order.

Per type: fetch the stored records the rows name, give new rows their ids up front, fetch the
records their references name, then write in batches. Each batch runs in a savepoint; if the
database refuses it, the batch is rolled back and its rows are retried one by one, each in its
own savepoint, so only the refused row is lost and every other row of the import carries on in
the one surrounding transaction.
"""

from __future__ import annotations

import contextlib
import logging
import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from crmsync.crm.base import utcnow
from crmsync.crm.records import BusinessUnit, Record, User
from crmsync.crm.roles import RolePrivilege, SecurityRole
from crmsync.errors import InvalidInput
from crmsync.importing import conflicts, lookups
from crmsync.importing.changes import Change, Defaults, FieldProblem, plan_change
from crmsync.importing.lookups import LINKS, Link, chunks
from crmsync.importing.references import Directory, Entry
from crmsync.importing.report import ImportReport, RowError
from crmsync.importing.rows import ValidRow
from crmsync.importing.schemas import LOAD_ORDER, SPECS, TypeSpec

BATCH_SIZE = 500


@dataclass(frozen=True)
class LinkOp:
    name: str
    """The row's field: roles or members."""
    link: Link
    owner_id: uuid.UUID
    add: set[uuid.UUID]
    remove: set[uuid.UUID]


@dataclass
class Applied:
    change: Change
    obj: Any
    outcome: str
    """created, updated or unchanged."""
    link_ops: list[LinkOp] = field(default_factory=list)


def db_reason(exc: Exception) -> tuple[str | None, str]:
    """(column, message) for a database refusal, in the database's words."""
    if isinstance(exc, StaleDataError):
        return None, "the record was changed by someone else during the import; import again"
    diag = getattr(getattr(exc, "orig", None), "diag", None)
    if diag is None or not diag.message_primary:
        return None, f"the database refused the row: {str(exc).splitlines()[0]}"
    column = diag.column_name
    detail = diag.message_detail
    if column is None and detail:
        keys = re.match(r"Key \(([^)]*)\)", detail)
        if keys:
            named = [c.strip() for c in keys.group(1).split(",")]
            column = next((c for c in named if c != "record_type"), named[0])
    message = f"the database refused the row: {diag.message_primary}"
    return column, message + (f" ({detail})" if detail else "")


def field_for_column(spec: TypeSpec, column: str | None) -> str | None:
    if column is None:
        return None
    if column == "address":
        return "email"
    if column in ("owner_id", "business_unit_id") and spec.owned:
        return "owner"
    return next((f.name for f in spec.fields if f.attr == column), column)


class Loader:
    def __init__(
        self,
        session: Session,
        report: ImportReport,
        advance: Callable[[Iterable[ValidRow], str], None],
    ) -> None:
        self.session = session
        self.report = report
        self.advance = advance
        self.directory = Directory()
        self._links: dict[Link, dict[uuid.UUID, set[uuid.UUID]]] = {}
        self._business_units: list[uuid.UUID] | None = None
        self._default_owner: str | Entry | None = None
        self._default_owner_name: str | None = None

    # --- set-up -----------------------------------------------------------------------------

    def note_refused(self, type_key: str, ext_id: str, where: str) -> None:
        self.directory.note_refused(SPECS[type_key].record_type, ext_id, where)

    def set_default_owner(self, name: str | None, users: list[tuple[str, str]]) -> None:
        """Check the default owner names a user (of this import or stored) before writing.

        ``users`` are (id, username) of every user row of the import, good or bad: a bad one is
        still the intended owner, and the rows it should own are refused saying so.
        """
        if name is None:
            return
        self._default_owner_name = name
        for ext_id, username in users:
            if name in (ext_id, username):
                self._default_owner = ext_id
                return
        found = self.session.execute(
            sa.select(User.id, User.business_unit_id)
            .where(sa.or_(User.external_id == name, User.username == name))
            .order_by((User.external_id == name).desc())
            .limit(1)
        ).first()
        if found is None:
            raise InvalidInput(
                f'the default owner "{name}" is not a user (by id or username) in this import or '
                "in the database; name an existing user"
            )
        self._default_owner = Entry(found.id, "user", found.business_unit_id)

    # --- per type ---------------------------------------------------------------------------

    def load(self, rows: dict[str, list[ValidRow]]) -> None:
        with _quiet_aborted_pipelines():
            for key in LOAD_ORDER:
                if rows.get(key):
                    self._load_type(SPECS[key], rows[key])

    def _load_type(self, spec: TypeSpec, given: list[ValidRow]) -> None:
        rows, refusals = conflicts.parents_first(spec, given)
        existing = lookups.fetch_existing(self.session, spec, [r.ext_id for r in rows])
        for row in rows:
            obj = existing.get(row.ext_id)
            entry = Entry(
                obj.id if obj is not None else uuid.uuid4(),
                spec.record_type,
                getattr(obj, "business_unit_id", None),
                can_own=getattr(obj, "team_type", "owner") == "owner",
                origin=row.source.where,
                stored=obj is not None,
            )
            self.directory.add(spec.record_type, row.ext_id, entry)
        lookups.fetch_references(self.session, self.directory, spec, rows)
        for (type_key, _), link in LINKS.items():
            if type_key == spec.key:
                owners = [obj.id for obj in existing.values()]
                self._links[link] = lookups.fetch_links(self.session, link, owners)
        rows, more = self._unique_names(spec, rows)
        for row, name, message in refusals + more:
            self._refuse(spec, row, name, message)
        self.advance([row for row, _, _ in refusals + more], spec.key)

        big = len(rows) >= 2 * BATCH_SIZE
        refresh = big and lookups.estimated_rows(self.session, spec) < len(rows)
        for number, batch in enumerate(chunks(rows, BATCH_SIZE)):
            self._write_batch(spec, batch, existing)
            self.advance(batch, spec.key)
            if number == 0 and refresh:
                lookups.refresh_statistics(self.session, spec)

    def _unique_names(
        self, spec: TypeSpec, rows: list[ValidRow]
    ) -> tuple[list[ValidRow], list[conflicts.Refusal]]:
        if spec.key == "users":
            taken = lookups.stored_usernames(self.session, (r.get("username") for r in rows))
            return conflicts.unique_usernames(rows, self.directory, taken)
        if spec.key == "roles":
            names = lookups.stored_role_names(self.session, (r.get("name") for r in rows))
            return conflicts.unique_role_names(rows, self.directory, names)
        return rows, []

    # --- writing ----------------------------------------------------------------------------

    def _write_batch(
        self, spec: TypeSpec, batch: Sequence[ValidRow], existing: dict[str, Any]
    ) -> None:
        try:
            with self.session.begin_nested():
                applied, problems = self._attempt(spec, batch, existing)
        except sa.exc.SQLAlchemyError as exc:
            _reraise_if_connection_lost(exc)
            applied, problems = [], []
            for row in batch:  # find the refused row(s): one savepoint per row
                try:
                    with self.session.begin_nested():
                        one, one_problems = self._attempt(spec, [row], existing)
                except sa.exc.SQLAlchemyError as row_exc:
                    _reraise_if_connection_lost(row_exc)
                    column, message = db_reason(row_exc)
                    self._refuse(spec, row, field_for_column(spec, column), message)
                else:
                    applied += one
                    problems += one_problems
        for row, problem in problems:
            self._refuse(spec, row, problem.field, problem.message)
        for item in applied:
            self._done(spec, item)

    def _attempt(
        self, spec: TypeSpec, rows: Sequence[ValidRow], existing: dict[str, Any]
    ) -> tuple[list[Applied], list[tuple[ValidRow, FieldProblem]]]:
        """Apply rows to the session and flush; raises if the database refuses."""
        applied: list[Applied] = []
        problems: list[tuple[ValidRow, FieldProblem]] = []
        pending_new: set[uuid.UUID] = set()
        defaults = Defaults(self._business_unit_default, self._owner_default)
        for row in rows:
            obj = existing.get(row.ext_id)
            try:
                change = plan_change(spec, row, obj, self.directory, defaults)
            except FieldProblem as problem:
                problems.append((row, problem))
                self._mark_failed(spec, row)
                continue
            targets = {v for v in change.columns.values() if isinstance(v, uuid.UUID)}
            if pending_new & targets:
                # Its parent was created earlier in this batch: insert that first, since the
                # unit of work does not order rows by foreign keys it has no relationship for.
                self.session.flush()
                pending_new.clear()
            item = self._apply(spec, change, obj)
            if item.outcome == "created":
                pending_new.add(change.entry.id)
            applied.append(item)
        self.session.flush()
        self._write_links(applied)
        return applied, problems

    def _apply(self, spec: TypeSpec, change: Change, obj: Any) -> Applied:
        if obj is None:
            obj = spec.model(id=change.entry.id, external_id=change.row.ext_id, **change.columns)
            for slot, address in sorted(change.emails.items()):
                if address is not None:
                    obj.set_email(address, slot)
            if change.privileges:
                obj.privileges = [
                    RolePrivilege(privilege=name, depth=depth)
                    for name, depth in change.privileges.items()
                ]
            self.session.add(obj)
            item = Applied(change, obj, "created")
            self._plan_links(spec, item, new=True)
            return item

        changed = False
        for attr, value in change.columns.items():
            if getattr(obj, attr) != value:
                setattr(obj, attr, value)
                changed = True
        if change.emails:
            current = {e.slot: e.address for e in obj.email_addresses}
            for slot, address in sorted(change.emails.items()):
                if current.get(slot) != address:
                    obj.set_email(address, slot)
                    changed = True
        if change.privileges is not None:
            changed |= _sync_privileges(obj, change.privileges)
        changed |= self._plan_links(spec, item := Applied(change, obj, "unchanged"), new=False)
        if changed:
            item.outcome = "updated"
            if isinstance(obj, Record):
                # Touching the record row bumps its version even when only emails, roles or
                # members changed, so the sync engines notice.
                obj.modified_at = utcnow()
        return item

    def _plan_links(self, spec: TypeSpec, item: Applied, *, new: bool) -> bool:
        changed = False
        owner_id = item.change.entry.id
        for name, wanted in item.change.links.items():
            link = LINKS[(spec.key, name)]
            current = set() if new else self._links.get(link, {}).get(owner_id, set())
            add, remove = wanted - current, current - wanted
            if add or remove:
                item.link_ops.append(LinkOp(name, link, owner_id, add, remove))
                changed = True
        return changed

    def _write_links(self, applied: list[Applied]) -> None:
        inserts: dict[Link, list[dict[str, uuid.UUID]]] = {}
        for item in applied:
            for op in item.link_ops:
                link, table = op.link, op.link.table
                if op.remove:
                    self.session.execute(
                        table.delete().where(
                            table.c[link.owner] == op.owner_id, table.c[link.other].in_(op.remove)
                        )
                    )
                inserts.setdefault(link, []).extend(
                    {link.owner: op.owner_id, link.other: other} for other in op.add
                )
        for link, values in inserts.items():
            if values:
                self.session.execute(link.table.insert(), values)

    def _done(self, spec: TypeSpec, item: Applied) -> None:
        """Bookkeeping once the row's savepoint is released: it is in the transaction for good."""
        entry = item.change.entry
        entry.business_unit_id = getattr(item.obj, "business_unit_id", None)
        if spec.key == "teams":
            entry.can_own = item.obj.team_type == "owner"
        for op in item.link_ops:
            self._links.setdefault(op.link, {})[op.owner_id] = set(item.change.links[op.name])
        counts = self.report.count(spec.key)
        setattr(counts, item.outcome, getattr(counts, item.outcome) + 1)

    def _refuse(self, spec: TypeSpec, row: ValidRow, field: str | None, message: str) -> None:
        self.report.errors.append(RowError(row.source.file, row.source.line, field, message))
        self.report.count(spec.key).failed += 1
        self._mark_failed(spec, row)

    def _mark_failed(self, spec: TypeSpec, row: ValidRow) -> None:
        """A refused new row leaves nothing to point to; a refused update leaves the stored one."""
        entry = self.directory.get(spec.record_type, row.ext_id)
        if entry is not None and entry.origin == row.source.where and not entry.stored:
            entry.failed = True

    # --- defaults ---------------------------------------------------------------------------

    def _business_unit_default(self, label: str) -> uuid.UUID:
        if self._business_units is None:
            # Business units load first, so by now this sees this import's units too.
            self._business_units = list(self.session.scalars(sa.select(BusinessUnit.id).limit(2)))
        if len(self._business_units) == 1:
            return self._business_units[0]
        why = (
            "there is no business unit yet; add one (business_units) and name it here"
            if not self._business_units
            else f"with more than one business unit, every {label} must name its business_unit"
        )
        raise FieldProblem("business_unit", f"a value is required: {why}")

    def _owner_default(self) -> Entry:
        owner = self._default_owner
        if owner is None:
            raise FieldProblem(
                "owner", "owner is required; give the owner's user or team id, or a default owner"
            )
        if isinstance(owner, Entry):
            return owner
        entry = self.directory.get("user", owner)
        if entry is None or entry.failed:
            where = f" ({entry.origin})" if entry is not None else ""
            raise FieldProblem(
                "owner",
                f'owner is empty and the default owner "{self._default_owner_name}" was not '
                f"imported{where}",
            )
        return entry


def _sync_privileges(role: SecurityRole, wanted: dict[str, Any]) -> bool:
    current = {p.privilege: p.depth for p in role.privileges}
    if current == wanted:
        return False
    for grant in list(role.privileges):
        if grant.privilege not in wanted:
            role.privileges.remove(grant)
        elif grant.depth != wanted[grant.privilege]:
            grant.depth = wanted[grant.privilege]
    for name, depth in wanted.items():
        if name not in current:
            role.privileges.append(RolePrivilege(privilege=name, depth=depth))
    return True


class _AbortedPipelineFilter(logging.Filter):
    """Drops psycopg's warning that a pipeline ended after one of its statements failed.

    psycopg runs executemany in a pipeline; when the database refuses a row there, it raises that
    refusal (which the loader reports per row) and also logs the pipeline's own "pipeline
    aborted" at exit, which would only be noise in the import's output.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        ignored = str(record.msg).startswith("error ignored terminating")
        return not (ignored and "pipeline aborted" in record.getMessage())


@contextlib.contextmanager
def _quiet_aborted_pipelines() -> Iterator[None]:
    psycopg_logger = logging.getLogger("psycopg")
    quiet = _AbortedPipelineFilter()
    psycopg_logger.addFilter(quiet)
    try:
        yield
    finally:
        psycopg_logger.removeFilter(quiet)


def _reraise_if_connection_lost(exc: sa.exc.SQLAlchemyError) -> None:
    # A lost connection is not the row's fault; retrying row by row would only repeat it.
    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        raise exc
