"""The scenario reference, generated from the schema: every key, default, unit and rule.

``fedsim defaults`` prints :func:`defaults_yaml`: a complete scenario with
every default, each key commented with its description and constraints. It
is valid YAML that loads back to the defaults, so it doubles as a template.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

from fedsim.config.schema import Scenario

__all__ = ["defaults_yaml"]


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
        note = field.description or ""
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


def defaults_yaml() -> str:
    """The fully defaulted scenario as commented YAML (loads back to the defaults)."""
    out = [
        "# fedsim scenario reference: every key with its default, unit and rule.",
        "# Units are in key names: _s seconds, _bps bit/s, _hz Hz, _db/_dbm dB, _m metres, _gb GB.",
        "# Copy what you need; omitted keys take these defaults. Unknown keys are errors.",
    ]
    default = Scenario()
    for name in Scenario.model_fields:
        out.append("")
        doc = (type(getattr(default, name)).__doc__ or "").strip().splitlines()[0].replace("``", "")
        out.append(f"{name}:  # {doc}")
        _emit(getattr(default, name), 1, out)
    return "\n".join(out) + "\n"
