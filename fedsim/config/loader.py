"""Load scenario YAML: line numbers, ``extends:``, ``--set`` overrides, strict validation.

The pipeline is: read YAML (keeping the line of every key) -> resolve
``extends:`` chains (deep merge, child wins) -> apply ``--set a.b=value``
overrides -> validate against :class:`~fedsim.config.schema.Scenario` ->
check the cross-field rules of :mod:`fedsim.config.rules`. Every failure is
a :class:`ScenarioError` with file, key path, line and rule.
"""

from __future__ import annotations

import copy
import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from fedsim.config.errors import ScenarioError
from fedsim.config.rules import check_rules
from fedsim.config.schema import Scenario

__all__ = ["load_scenario", "parse_overrides", "LoadedScenario", "scenario_from_dict"]


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e9`` (no dot) as a float, as users expect."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


class Replace(dict):
    """A mapping tagged ``!replace`` in a scenario file: it replaces the extended
    file's mapping instead of being merged into it (``extends:`` merges mappings
    key by key otherwise)."""


def _construct_replace(loader: yaml.SafeLoader, node: yaml.Node) -> Replace:
    if not isinstance(node, yaml.MappingNode):
        raise yaml.constructor.ConstructorError(None, None, "!replace applies to a mapping", node.start_mark)
    return Replace(loader.construct_mapping(node, deep=True))


_Loader.add_constructor("!replace", _construct_replace)


@dataclass(frozen=True)
class ScenarioPaths:
    """The scenario's file paths, resolved once at load time against the scenario
    file's directory (``~`` expanded; ``None`` where the key is unset)."""

    data_dir: Path | None
    availability_trace: Path | None
    capacity_trace: Path | None
    graphml: Path | None


class LoadedScenario:
    """A validated scenario plus where it came from.

    Attributes:
        scenario: the validated :class:`Scenario`.
        path: the scenario file (None when built from a dict).
        base_dir: directory that relative paths in the scenario resolve against.
        raw: the merged dict before validation (after extends and overrides).
        origins: ``{key path tuple: (file, line)}`` of every key given in a
            file or by ``--set`` (used by :meth:`error`).
        paths: the scenario's file paths, resolved once (:class:`ScenarioPaths`).
    """

    def __init__(
        self,
        scenario: Scenario,
        path: Path | None,
        raw: dict[str, Any],
        origins: dict[tuple[str, ...], tuple[str | None, int | None]] | None = None,
    ) -> None:
        self.scenario = scenario
        self.path = path
        self.base_dir = path.parent if path is not None else Path.cwd()
        self.raw = raw
        self.origins = dict(origins or {})
        d, t = scenario.devices, scenario.topology
        self.paths = ScenarioPaths(
            data_dir=self.resolve_path(scenario.data.dir),
            availability_trace=self.resolve_path(d.availability_trace),
            capacity_trace=self.resolve_path(d.capacity_trace),
            graphml=self.resolve_path(t.graphml),
        )

    def resolve_path(self, p: str | None) -> Path | None:
        """Resolve a path from the scenario relative to the scenario file's directory."""
        if p is None:
            return None
        q = Path(p).expanduser()
        return q if q.is_absolute() else (self.base_dir / q)

    def error(self, key: str, rule: str) -> ScenarioError:
        """The :class:`ScenarioError` for ``key`` (dotted path) breaking ``rule``.

        Names the file and line where ``key`` (or its nearest given parent) was
        set; the scenario file without a line if the key took its default. For
        rules checked after loading (e.g. where the world is built), so their
        errors read exactly like the loader's.
        """
        fname, line = _lookup_origin(tuple(key.split(".")), self.origins, str(self.path) if self.path else None)
        return ScenarioError(rule, file=fname, key=key, line=line)


def _lines(node: yaml.Node, prefix: tuple[str, ...], out: dict[tuple[str, ...], int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = prefix + (str(k.value),)
            out[key] = k.start_mark.line + 1
            _lines(v, key, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            key = prefix + (str(i),)
            out[key] = v.start_mark.line + 1
            _lines(v, key, out)


def _read_yaml(path: Path) -> tuple[dict[str, Any], dict[tuple[str, ...], int]]:
    fname = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScenarioError("file not found", file=fname) from None
    except IsADirectoryError:
        raise ScenarioError("is a directory, expected a YAML file", file=fname) from None
    except UnicodeDecodeError:
        raise ScenarioError("not UTF-8 text", file=fname) from None
    except OSError as e:  # no permission, a path through a file, ...
        raise ScenarioError(f"cannot read the file ({e.strerror or type(e).__name__})", file=fname) from None
    try:
        node = yaml.compose(text, Loader=_Loader)
        data = yaml.load(text, Loader=_Loader)
    except yaml.MarkedYAMLError as e:
        line = e.problem_mark.line + 1 if e.problem_mark is not None else None
        raise ScenarioError(f"invalid YAML: {e.problem or e.context}", file=fname, line=line) from None
    except yaml.YAMLError as e:
        raise ScenarioError(f"invalid YAML: {e}", file=fname) from None
    if data is None:
        raise ScenarioError("empty scenario file (expected a mapping of sections)", file=fname)
    if not isinstance(data, dict):
        raise ScenarioError(f"top level must be a mapping of sections, got {type(data).__name__}", file=fname, line=1)
    lines: dict[tuple[str, ...], int] = {}
    if node is not None:
        _check_duplicates(node, (), fname)
        _lines(node, (), lines)
    return data, lines


def _check_duplicates(node: yaml.Node, prefix: tuple[str, ...], fname: str) -> None:
    """A key given twice in one mapping (YAML would silently keep the last) is an error naming both lines.

    Raises:
        ScenarioError: at the second occurrence's line.
    """
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for k, v in node.value:
            name, line = str(k.value), k.start_mark.line + 1
            if name in seen and k.tag != "tag:yaml.org,2002:merge":
                raise ScenarioError(f"key given twice in one mapping (lines {seen[name]} and {line}); keep one",
                                    file=fname, key=".".join((*prefix, name)), line=line)
            seen[name] = line
            _check_duplicates(v, (*prefix, name), fname)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _check_duplicates(v, (*prefix, str(i)), fname)


def _plain(v: Any) -> Any:
    """``v`` with every :class:`Replace` turned into a plain dict."""
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Merge ``over`` into ``base`` key by key (child wins); a mapping tagged
    ``!replace`` replaces the base's mapping whole."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and not isinstance(v, Replace) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = _plain(copy.deepcopy(v))
    return out


def _origin_map(data: dict[str, Any], prefix: tuple[str, ...], fname: str, lines: dict, out: dict) -> None:
    """Record (file, line) for every key path the file defines (child files override)."""
    for k, v in data.items():
        key = prefix + (str(k),)
        out[key] = (fname, lines.get(key))
        if isinstance(v, dict):
            _origin_map(v, key, fname, lines, out)
        elif isinstance(v, list):
            for i, item in enumerate(v):
                ikey = key + (str(i),)
                out[ikey] = (fname, lines.get(ikey))
                if isinstance(item, dict):
                    _origin_map(item, ikey, fname, lines, out)


def _resolve(path: Path, chain: tuple[Path, ...], origins: dict) -> dict[str, Any]:
    path = path.resolve()
    if path in chain:
        cycle = " -> ".join(p.name for p in (*chain, path))
        raise ScenarioError(f"extends cycle: {cycle}", file=str(chain[-1]), key="extends")
    data, lines = _read_yaml(path)
    parent = data.pop("extends", None)
    base: dict[str, Any] = {}
    if parent is not None:
        if not isinstance(parent, str) or not parent:
            raise ScenarioError("must be a path to another scenario file", file=str(path), key="extends", line=lines.get(("extends",)))
        ppath = Path(parent)
        if not ppath.is_absolute():
            ppath = path.parent / ppath
        if not ppath.exists():
            raise ScenarioError(f"extended file {parent!r} does not exist", file=str(path), key="extends", line=lines.get(("extends",)))
        base = _resolve(ppath, (*chain, path), origins)
    _drop_replaced(data, (), origins)
    _origin_map(data, (), str(path), lines, origins)
    return _deep_merge(base, data)


def _drop_replaced(data: dict[str, Any], prefix: tuple[str, ...], origins: dict) -> None:
    """Forget the origins of keys under a ``!replace`` mapping (they no longer exist)."""
    for k, v in data.items():
        key = prefix + (str(k),)
        if isinstance(v, Replace):
            for o in [o for o in origins if o[: len(key)] == key and len(o) > len(key)]:
                del origins[o]
        elif isinstance(v, dict):
            _drop_replaced(v, key, origins)


def parse_overrides(items: list[str] | None) -> list[tuple[str, Any]]:
    """Parse ``a.b.c=value`` strings; values are read as YAML scalars/lists (``1e9``, ``[1,2]``, ``true``).

    Raises:
        ScenarioError: (``file="--set"``) an item without ``=``, an empty key, or bad YAML.
    """
    out: list[tuple[str, Any]] = []
    for item in items or []:
        if "=" not in item:
            raise ScenarioError(f"override {item!r} must look like key.path=value", file="--set")
        key, _, value = item.partition("=")
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ScenarioError(f"override {item!r} has an empty key", file="--set")
        try:
            parsed = yaml.load(value, Loader=_Loader) if value.strip() else None
        except yaml.YAMLError:
            parsed = value
        out.append((key, parsed))
    return out


def _apply_overrides(data: dict[str, Any], overrides: list[tuple[str, Any]], origins: dict) -> dict[str, Any]:
    data = copy.deepcopy(data)
    for key, value in overrides:
        parts = key.split(".")
        cur: Any = data
        for i, part in enumerate(parts[:-1]):
            nxt = cur.get(part) if isinstance(cur, dict) else None
            if nxt is None:
                nxt = {}
                cur[part] = nxt
                origins[tuple(parts[: i + 1])] = ("--set", None)  # a section --set created: blame --set
            elif not isinstance(nxt, dict):
                raise ScenarioError(f"cannot set {key!r}: {'.'.join(parts[: i + 1])} is not a mapping", file="--set", key=key)
            cur = nxt
        cur[parts[-1]] = value
        origins[tuple(parts)] = ("--set", None)
    return data


def _describe(err: dict[str, Any], model_keys: list[str] | None) -> str:
    t = err["type"]
    if t == "extra_forbidden":
        rule = "unknown key"
        if model_keys:
            close = difflib.get_close_matches(str(err["loc"][-1]), model_keys, n=1, cutoff=0.6)
            if close:
                rule += f"; did you mean {close[0]!r}?"
            rule += f" (allowed: {', '.join(model_keys)})"
        return rule
    if t == "missing":
        return "required key is missing"
    msg = err["msg"]
    inp = err.get("input")
    if t in ("literal_error",):
        return f"{msg}, got {inp!r}"
    if t.endswith("_type") or t.endswith("_parsing"):
        return f"{msg}, got {type(inp).__name__} {inp!r}"
    if t in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return f"{msg}, got {inp!r}"
    return msg


def _allowed_keys(loc: tuple[Any, ...]) -> list[str] | None:
    """Names of the keys allowed at the parent of ``loc`` (for unknown-key errors)."""
    model: Any = Scenario
    for part in loc[:-1]:
        fields = getattr(model, "model_fields", None)
        if fields is None:
            return None
        if part in fields:
            ann = fields[part].annotation
            model = ann
            if getattr(ann, "__origin__", None) is dict:
                model = ann.__args__[1]
            elif getattr(ann, "__origin__", None) is list:
                model = ann.__args__[0]
        elif isinstance(part, int | str):
            continue
    fields = getattr(model, "model_fields", None)
    return list(fields) if fields else None


#: Top-level sections that moved: old name -> new key path (a one-line error names the new place).
MOVED_SECTIONS: dict[str, str] = {"alignment": "protocol.fedmoe.alignment"}


def scenario_from_dict(data: dict[str, Any], *, origins: dict | None = None, file: str | None = None) -> Scenario:
    """Validate a merged scenario dict, raising one :class:`ScenarioError` for the first problem.

    Raises:
        ScenarioError: the first schema violation, with file, line and key path from ``origins``.
    """
    origins = origins or {}
    for old, new in MOVED_SECTIONS.items():
        if old in data:
            fname, line = _lookup_origin((old,), origins, file)
            raise ScenarioError(f"this section moved to {new} (same keys)", file=fname, key=old, line=line)
    try:
        return Scenario.model_validate(data)
    except ValidationError as e:
        errs = e.errors()
        err = errs[0]
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        # union branches add type names (e.g. 'float', 'none') to loc: drop non-keys we know
        clean: list[Any] = []
        for p in loc:
            if isinstance(p, str) and p in ("float", "int", "str", "bool", "none", "list[...]", "dict[str,...]"):
                continue
            clean.append(p)
        key = ".".join(str(p) for p in clean)
        fname, line = _lookup_origin(tuple(str(p) for p in clean), origins, file)
        raise ScenarioError(_describe(err, _allowed_keys(tuple(clean))), file=fname, key=key, line=line) from None


def _lookup_origin(key: tuple[str, ...], origins: dict, default_file: str | None) -> tuple[str | None, int | None]:
    for n in range(len(key), 0, -1):
        hit = origins.get(key[:n])
        if hit is not None:
            return hit
    return default_file, None


def load_scenario(path: str | Path, overrides: list[str] | None = None, *, seed: int | None = None) -> LoadedScenario:
    """Load, merge, override and validate a scenario file.

    Args:
        path: the YAML file.
        overrides: ``key.path=value`` strings (as given to ``--set``).
        seed: if given, replaces ``run.seed``.

    Rules that need the built world (the topology builds, every client reaches
    the server, the alignment policy exists) are not checked here: they run
    where the world is built (:func:`fedsim.build.check_world_rules`, which
    ``fedsim validate`` also calls).

    Raises:
        ScenarioError: on any problem, with file, key path, line and rule.
    """
    p = Path(path)
    origins: dict[tuple[str, ...], tuple[str | None, int | None]] = {}
    data = _resolve(p, (), origins)
    ov = parse_overrides(overrides)
    if seed is not None:
        ov.append(("run.seed", seed))
    data = _apply_overrides(data, ov, origins)
    scenario = scenario_from_dict(data, origins=origins, file=str(p))
    loaded = LoadedScenario(scenario, p.resolve(), data, origins)
    check_rules(loaded)
    return loaded
