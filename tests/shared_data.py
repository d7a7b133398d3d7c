"""Helpers for tests that use the project's shared data (``../shared/data`` beside the repo).

CI has that directory; a fresh clone elsewhere may not. Tests that need it skip
with a reason naming the missing directory instead of failing.
"""

from __future__ import annotations

from pathlib import Path

import yaml


def missing_data_dir(scenario: Path) -> Path | None:
    """The scenario's ``data.dir`` (resolved against the file) if it is set and absent, else None."""
    raw = yaml.safe_load(Path(scenario).read_text()) or {}
    d = (raw.get("data") or {}).get("dir")
    if d is None:
        return None
    p = Path(d) if Path(d).is_absolute() else (Path(scenario).parent / d)
    return None if p.resolve().is_dir() else p.resolve()


#: Shipped scenarios too large for the fast suite: each per-scenario test still runs them
#: under ``pytest -m slow`` (metro-1m: validating alone builds a million-device world, ~80 s).
CITY_SCALE = frozenset({"metro-1m"})


def scenario_param(path: Path, *marks: object) -> object:
    """``pytest.param(path, id=stem)`` with ``marks``, plus ``slow`` for a :data:`CITY_SCALE` scenario."""
    import pytest

    ms = list(marks) + ([pytest.mark.slow] if Path(path).stem in CITY_SCALE else [])
    return pytest.param(path, id=Path(path).stem, marks=ms)
