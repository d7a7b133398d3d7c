"""The scenario reference, generated from the schema: every key, default, unit and rule.

``fedsim defaults`` prints :func:`defaults_yaml`: a complete scenario with
every default, each key commented with its description and constraints. It
is valid YAML that loads back to the defaults, so it doubles as a template.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from fedsim.config.schema import DeviceClassConfig, Scenario

__all__ = ["defaults_yaml", "resolved_yaml"]


_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")


def _plain(text: str) -> str:
    """Docstring markup (``:class:`x```, double backquotes) as plain text."""
    return _ROLE.sub(lambda m: m.group(1).rsplit(".", 1)[-1], text).replace("``", "")


def _constraints(field: Any) -> str:
    parts = []
    for m in field.metadata:
        for attr, sym in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            v = getattr(m, attr, None)
            if v is not None:
                parts.append(f"{sym} {v:g}" if isinstance(v, int | float) else f"{sym} {v}")
        if getattr(m, "min_length", None):
            parts.append("non-empty" if field.annotation is str else f"at least {m.min_length} item(s)")
    ann = str(field.annotation).replace("typing.", "")
    if "Literal" in ann:
        inner = ann[ann.index("Literal[") + 8 : ann.index("]", ann.index("Literal["))]
        parts.append("one of " + inner.replace("'", ""))
    return "; ".join(parts)


def _scalar(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v) if v != int(v) or abs(v) < 1e6 else f"{v:.6g}".replace("e+0", "e").replace("e+", "e")
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)
    return json.dumps(v)  # lists / dicts in flow style


def _emit(value: BaseModel, indent: int, out: list[str]) -> None:
    pad = "  " * indent
    for name, field in type(value).model_fields.items():
        v = getattr(value, name)
        note = _plain(field.description or "")
        rule = _constraints(field)
        note = note.rstrip(".")
        comment = "  # " + " [" .join(p for p in (note, rule) if p) + ("]" if note and rule else "") if (note or rule) else ""
        if isinstance(v, BaseModel):
            out.append(f"{pad}{name}:{comment}")
            _emit(v, indent + 1, out)
        elif isinstance(v, list) and v and isinstance(v[0], BaseModel):
            out.append(f"{pad}{name}:{comment}")
            for item in v:
                out.append(f"{pad}  - {json.dumps(item.model_dump(mode='json'))}")
        else:
            dumped = v.model_dump(mode="json") if isinstance(v, BaseModel) else v
            out.append(f"{pad}{name}: {_scalar(dumped)}{comment}")


def _class_defaults_lines(class_defaults: Mapping[str, Mapping[str, Any]], pad: str) -> list[str]:
    """Comment lines listing every ``devices.classes.<class>`` key with each class's default.

    Comments, so the reference still loads back to the defaults (``classes: {}``).
    """
    names = list(class_defaults)
    out = [f"{pad}# Per-class keys of devices.classes.<class> ({', '.join(names)}) and each class's default;",
           f"{pad}# override any of them, e.g. `classes: {{phone: {{mobility: static}}}}` or",
           f"{pad}# `--set devices.classes.sensor.memory_gb=0.25` (omitted keys keep the class default):"]
    for key, field in DeviceClassConfig.model_fields.items():
        vals = ", ".join(f"{c} {_scalar(_listy(class_defaults[c].get(key)))}" for c in names)
        note = _plain(field.description or "").rstrip(".")
        rule = _constraints(field)
        out.append(f"{pad}#   {key}: {vals}  ({note}{'; ' + rule if rule else ''})")
    return out


def _listy(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def defaults_yaml(class_defaults: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """The fully defaulted scenario as commented YAML (loads back to the defaults).

    Args:
        class_defaults: ``{device class: {key: default}}``, the per-class defaults
            of :func:`fedsim.devices.params.default_device_classes` (the config layer
            imports no other layer, so the caller passes them: ``fedsim defaults``
            does). Each ``devices.classes.<class>`` key is then listed, as comments
            under ``devices.classes``, with every class's default.
    """
    out = [
        "# fedsim scenario reference: every key with its default, unit and rule.",
        "# Units are in key names: _s seconds, _bps bit/s, _hz Hz, _db/_dbm dB, _m metres, _gb GB.",
        "# Copy what you need; omitted keys take these defaults. Unknown keys are errors.",
    ]
    default = Scenario()
    for name in Scenario.model_fields:
        out.append("")
        doc = _plain((type(getattr(default, name)).__doc__ or "").strip().splitlines()[0])
        out.append(f"{name}:  # {doc}")
        start = len(out)
        _emit(getattr(default, name), 1, out)
        if name == "devices" and class_defaults:
            at = next(i for i in range(start, len(out)) if out[i].startswith("  classes:"))
            out[at + 1 : at + 1] = _class_defaults_lines(class_defaults, "    ")
    return "\n".join(out) + "\n"


def _origin(origins: dict, key: tuple[str, ...]) -> str:
    hit = origins.get(key)  # the key itself was given; otherwise it took its default
    if hit is None:
        return "default"
    fname, line = hit
    return f"{fname}:{line}" if line is not None else str(fname)


def _emit_resolved(value: BaseModel, key: tuple[str, ...], origins: dict, out: list[str]) -> None:
    pad = "  " * len(key)
    for name in type(value).model_fields:
        v = getattr(value, name)
        k = (*key, name)
        if isinstance(v, BaseModel):
            out.append(f"{pad}{name}:")
            _emit_resolved(v, k, origins, out)
        elif isinstance(v, dict) and v and all(isinstance(x, BaseModel) for x in v.values()):
            out.append(f"{pad}{name}:")
            for sub, model in v.items():
                out.append(f"{pad}  {sub}:")
                _emit_resolved(model, (*k, str(sub)), origins, out)
        else:
            dumped = [x.model_dump(mode="json") if isinstance(x, BaseModel) else x for x in v] if isinstance(v, list) else v
            out.append(f"{pad}{name}: {_scalar(dumped)}  # {_origin(origins, k)}")


def resolved_yaml(loaded: Any) -> str:
    """The fully resolved scenario (after ``extends:``, ``--set`` and defaults) as YAML,
    each value commented with where it came from (``FILE:LINE``, ``--set`` or ``default``).

    ``loaded`` is a :class:`~fedsim.config.loader.LoadedScenario`. The text loads back
    to the same scenario.
    """
    out = [f"# resolved scenario: {loaded.path}", "# each value: the file and line it came from, --set, or default"]
    for name in Scenario.model_fields:
        out.append(f"{name}:")
        _emit_resolved(getattr(loaded.scenario, name), (name,), loaded.origins, out)
    return "\n".join(out) + "\n"
