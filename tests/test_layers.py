"""Layer order: a lower layer never imports a higher one (``../shared/DESIGN.md``).

Two checks:

- runtime: a fresh interpreter imports the layers bottom to top (every module
  of each) and, after each layer, ``sys.modules`` must hold no module of a
  higher layer (whatever the import chain, module-level imports are caught);
- static: every ``import`` statement in a module, also those inside functions
  (lazy imports, which the runtime check cannot see until called), names the
  module's own layer or a lower one.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Bottom to top; a layer may import the ones before it only.
LAYERS: list[tuple[str, str]] = [
    ("config", "fedsim.config"),
    ("rng", "fedsim.rng"),
    ("engine", "fedsim.engine"),
    ("net", "fedsim.net"),
    ("devices", "fedsim.devices"),
    ("learning", "fedsim.learning"),
    ("alignment", "fedsim.alignment"),
    ("parts", "fedsim.parts"),
    ("build", "fedsim.build"),
    ("protocols", "fedsim.protocols"),
    ("sweep", "fedsim.sweep"),
    ("cli", "fedsim.cli"),
]
#: Top-level modules outside the order: the library entry point, the run-directory writer, the version.
UNLAYERED = {"fedsim", "fedsim.api", "fedsim.rundir", "fedsim.version"}


def _layer_of(mod: str) -> int | None:
    for i, (_, pkg) in enumerate(LAYERS):
        if mod == pkg or mod.startswith(pkg + "."):
            return i
    return None


def _modules(pkg: str) -> list[str]:
    """``pkg`` and, for a package, every module in it."""
    p = ROOT / Path(*pkg.split("."))
    if p.is_dir():
        return [pkg] + sorted(f"{pkg}.{f.stem}" for f in p.glob("*.py") if f.stem != "__init__")
    return [pkg]


def _source_files() -> list[tuple[str, Path]]:
    out = []
    for f in sorted((ROOT / "fedsim").rglob("*.py")):
        parts = f.relative_to(ROOT).with_suffix("").parts
        mod = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out.append((mod, f))
    return out


def test_layers_import_no_higher_layer_at_runtime() -> None:
    plan = [[name, _modules(pkg)] for name, pkg in LAYERS]
    code = (
        "import importlib, json, sys\n"
        f"plan = {json.dumps(plan)}\n"
        "seen = []\n"
        "for name, mods in plan:\n"
        "    for m in mods:\n"
        "        importlib.import_module(m)\n"
        "    seen.append([name, sorted(k for k in sys.modules if k.startswith('fedsim'))])\n"
        "print(json.dumps(seen))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    seen = json.loads(res.stdout.strip().splitlines()[-1])
    bad = []
    for level, (name, mods) in enumerate(seen):
        for m in mods:
            lv = _layer_of(m)
            if lv is not None and lv > level:
                bad.append(f"after importing {name!r}: {m} ({LAYERS[lv][0]}) is loaded")
    assert not bad, "; ".join(bad)


def test_no_import_statement_reaches_a_higher_layer() -> None:
    bad = []
    for mod, f in _source_files():
        lv = _layer_of(mod)
        if lv is None:
            continue
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            else:
                continue
            for n in names:
                dl = _layer_of(n)
                if dl is not None and dl > lv:
                    bad.append(f"{f.relative_to(ROOT)}:{node.lineno}: {mod} ({LAYERS[lv][0]}) imports {n} ({LAYERS[dl][0]})")
    assert not bad, "\n".join(bad)


def test_every_fedsim_module_has_a_layer() -> None:
    """A new top-level module must be placed in the order, else it escapes both checks."""
    for mod, _ in _source_files():
        assert mod in UNLAYERED or _layer_of(mod) is not None, f"{mod} is in no layer of LAYERS"
