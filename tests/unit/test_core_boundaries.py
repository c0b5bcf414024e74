"""The pure core stays pure: stdlib and itself only; its value sets match the CRM models'."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import crmsync.core
from crmsync.core import correlate, parties, promote

CORE_DIR = Path(crmsync.core.__file__).parent
CORE_MODULES = sorted(p for p in CORE_DIR.glob("*.py"))


def _imported_names(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: inside crmsync.core by construction
                names.append("crmsync.core." + (node.module or ""))
            else:
                names.append(node.module or "")
    return names


@pytest.mark.parametrize("path", CORE_MODULES, ids=lambda p: p.name)
def test_core_modules_import_only_stdlib_and_core(path: Path) -> None:
    for name in _imported_names(path):
        top = name.split(".")[0]
        if top == "crmsync":
            assert name == "crmsync.core" or name.startswith("crmsync.core."), (
                f"{path.name} imports {name}: the pure core may import only crmsync.core"
            )
        else:
            assert top in sys.stdlib_module_names, (
                f"{path.name} imports {name}, which is not in the standard library"
            )


_PROBE = """
import json, sys
before = set(sys.modules)
import importlib
for name in {modules!r}:
    importlib.import_module(name)
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def test_importing_the_core_loads_nothing_outside_stdlib_and_core() -> None:
    # In a fresh interpreter, so modules other tests imported cannot hide a stray import.
    modules = [f"crmsync.core.{p.stem}" for p in CORE_MODULES if p.stem != "__init__"]
    probe = _PROBE.format(modules=modules)
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = json.loads(result.stdout)
    strays = [
        name
        for name in loaded
        if not (
            name in ("crmsync", "crmsync.core")
            or name.startswith("crmsync.core.")
            or name.split(".")[0] in sys.stdlib_module_names
        )
    ]
    assert strays == []
    assert {"crmsync.core.promote", "crmsync.core.correlate"} <= set(loaded)


def test_value_sets_match_the_crm_models() -> None:
    # The core cannot import crmsync.crm; these equalities keep the two copies in step.
    from crmsync.crm.activities import CorrelationMethod
    from crmsync.crm.base import IncomingEmailFilter, PartyRole, Resolution

    pairs = [
        (promote.IncomingFilter, IncomingEmailFilter),
        (parties.PartyRole, PartyRole),
        (parties.Resolution, Resolution),
        (correlate.CorrelationMethod, CorrelationMethod),
    ]
    for core_enum, crm_enum in pairs:
        assert [m.value for m in core_enum] == [m.value for m in crm_enum], core_enum.__name__
        assert [m.name for m in core_enum] == [m.name for m in crm_enum], core_enum.__name__


def test_default_filter_is_the_crm_default() -> None:
    from crmsync.crm.base import IncomingEmailFilter

    assert promote.DEFAULT_FILTER.value == IncomingEmailFilter.RESPONSES.value
