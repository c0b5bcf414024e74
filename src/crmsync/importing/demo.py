"""The demo data set shipped with crmsync: Pohjola Sensors Oy, a Finnish industrial IoT company.

The files are package data of ``crmsync`` (``demo_data/*`` in pyproject.toml), found through
importlib.resources, so this works from a source checkout and from an installed wheel alike. (Not
from a zipped install: the importer reads real files.)
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from crmsync.importing.formats import FORMATS

DEMO_PACKAGE = "crmsync"
DEMO_FOLDER = "demo_data"
DEMO_DOMAIN = "demo.crmsync.test"
"""The domain of the demo users' mailboxes."""


def demo_data_files() -> list[Path]:
    """The demo files, in the order a person would read them (the importer orders by type)."""
    folder = resources.files(DEMO_PACKAGE).joinpath(DEMO_FOLDER)
    files = [
        Path(str(entry))
        for entry in folder.iterdir()
        if entry.is_file() and Path(entry.name).suffix in FORMATS
    ]
    return sorted(files, key=lambda p: p.name)
