"""Benchmark: `crmsync import` of N contacts, as ratios against a raw COPY of the same rows.

Machines here are noisy, so absolute times drift; the ratio to a baseline measured in the same
run does not (much). The baseline is psycopg's COPY of the same rows into a plain table: the
floor for getting N rows into PostgreSQL at all. The importer does more (validation, reference
look-ups, the record supertype plus the contact table, email address rows, idempotency), so the
ratio says what that costs.

    .venv/bin/python -m bench.import_bench [--rows 1000 10000] [--repeat 3]

Runs on a private embedded PostgreSQL in a temporary folder, which it stops at the end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import sqlalchemy as sa

from crmsync.config import load_settings
from crmsync.db import make_engine, normalize_url, start_embedded, stop_embedded, upgrade_schema
from crmsync.importing import import_files


def write_files(folder: Path, rows: int, bad: int = 0) -> list[Path]:
    people = folder / "people.json"
    people.write_text(
        json.dumps(
            {
                "business_units": [{"id": "bu", "name": "Bench Oy"}],
                "users": [
                    {
                        "id": "u1",
                        "username": "owner",
                        "last_name": "Owner",
                        "business_unit": "bu",
                        "email": "owner@bench.test",
                    }
                ],
            }
        )
    )
    contacts = folder / "contacts.csv"
    lines = ["id,first_name,last_name,email,owner,city"]
    broken = {rows * (i + 1) // (bad + 1) for i in range(bad)}
    for i in range(rows):
        email = "broken@" if i in broken else f"person.{i}@customer-{i % 97}.test"
        lines.append(f"c{i},Aino,Laine {i},{email},u1,Tampere")
    contacts.write_text("\n".join(lines) + "\n")
    return [people, contacts]


def fresh_database(admin_url: str, name: str) -> str:
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return sa.engine.make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def copy_baseline(url: str, rows: int) -> float:
    dsn = normalize_url(url).replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS raw_contact (id text, first_name text, "
            "last_name text, email text, owner text, city text)"
        )
        conn.execute("TRUNCATE raw_contact")
        start = time.perf_counter()
        with conn.cursor().copy("COPY raw_contact FROM STDIN") as copy:
            for i in range(rows):
                copy.write_row(
                    (
                        f"c{i}",
                        "Aino",
                        f"Laine {i}",
                        f"person.{i}@customer-{i % 97}.test",
                        "u1",
                        "Tampere",
                    )
                )
        conn.commit()
        return time.perf_counter() - start


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(rows: int, repeat: int, admin_url: str, work: Path) -> dict[str, float]:
    results: dict[str, list[float]] = {
        "baseline_copy": [],
        "create": [],
        "reimport_unchanged": [],
        "with_3_bad_rows": [],
    }
    files = write_files(work, rows)
    bad_dir = work / "bad"
    bad_dir.mkdir(exist_ok=True)
    bad_files = write_files(bad_dir, rows, bad=3)
    for r in range(repeat):
        url = fresh_database(admin_url, f"bench_{rows}_{r}")
        engine = make_engine(url)
        upgrade_schema(engine)
        results["baseline_copy"].append(copy_baseline(url, rows))
        results["create"].append(timed(lambda e=engine: import_files(e, files)))
        results["reimport_unchanged"].append(timed(lambda e=engine: import_files(e, files)))
        engine.dispose()
        url = fresh_database(admin_url, f"bench_{rows}_{r}_bad")
        engine = make_engine(url)
        upgrade_schema(engine)
        report = import_files(engine, bad_files[:1])
        assert report.ok
        t = timed(lambda e=engine: import_files(e, bad_files))
        results["with_3_bad_rows"].append(t)
        engine.dispose()
    return {k: statistics.median(v) for k, v in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="crmsync-bench-") as tmp:
        settings = load_settings({"CRMSYNC_HOME": str(Path(tmp) / "home")})
        server = start_embedded(settings)
        try:
            print(f"{'rows':>7} {'case':<20} {'median s':>9} {'x COPY':>8} {'rows/s':>9}")
            for rows in args.rows:
                work = Path(tmp) / f"rows{rows}"
                work.mkdir()
                medians = run(rows, args.repeat, server.admin_url, work)
                base = medians["baseline_copy"]
                for case, seconds in medians.items():
                    print(
                        f"{rows:>7} {case:<20} {seconds:>9.3f} {seconds / base:>8.1f} "
                        f"{rows / seconds:>9.0f}"
                    )
        finally:
            stop_embedded(settings)


if __name__ == "__main__":
    main()
