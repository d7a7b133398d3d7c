"""Walk the scenario schema generically: every leaf key with its type and bounds.

Used by the "every key changes the run" and the bounds tests, so both cover keys
added to :mod:`fedsim.config.schema` later without being edited.
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

import annotated_types as at
from pydantic import BaseModel

from fedsim.config.schema import Scenario

#: a representative entry for ``dict[str, Model]`` sections (their fields are walked under it)
DICT_SAMPLE_KEYS = {"devices.classes": "camera"}


@dataclass(frozen=True)
class Leaf:
    """One scenario key: dotted path, its annotation (Optional unwrapped), bounds."""

    path: str
    kind: str  # "bool", "int", "float", "literal", "str", "list", "dict", "other"
    optional: bool
    choices: tuple[Any, ...] = ()
    lo: float | None = None
    lo_strict: bool = False
    hi: float | None = None
    hi_strict: bool = False

    @property
    def numeric(self) -> bool:
        return self.kind in ("int", "float")


def _unwrap(ann: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(ann)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return ann, False


def _kind(ann: Any) -> str:
    if ann is bool:
        return "bool"
    if ann is int:
        return "int"
    if ann is float:
        return "float"
    if ann is str:
        return "str"
    origin = typing.get_origin(ann)
    if origin is Literal:
        return "literal"
    if origin is list:
        return "list"
    if origin is dict:
        return "dict"
    return "other"


def leaves(model: type[BaseModel] = Scenario, prefix: str = "") -> list[Leaf]:
    """Every leaf key of ``model`` (nested sections walked; ``dict[str, Model]`` walked
    under its :data:`DICT_SAMPLE_KEYS` entry)."""
    out: list[Leaf] = []
    for name, f in model.model_fields.items():
        path = f"{prefix}{name}"
        ann, optional = _unwrap(f.annotation)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out.extend(leaves(ann, path + "."))
            continue
        if typing.get_origin(ann) is dict:
            kt, vt = typing.get_args(ann)
            if isinstance(vt, type) and issubclass(vt, BaseModel):
                sample = DICT_SAMPLE_KEYS.get(path)
                if sample is None:
                    raise KeyError(f"{path}: add a sample entry to DICT_SAMPLE_KEYS")
                out.extend(leaves(vt, f"{path}.{sample}."))
                continue
        lo = hi = None
        lo_s = hi_s = False
        for m in f.metadata:
            if isinstance(m, at.Ge):
                lo = m.ge
            elif isinstance(m, at.Gt):
                lo, lo_s = m.gt, True
            elif isinstance(m, at.Le):
                hi = m.le
            elif isinstance(m, at.Lt):
                hi, hi_s = m.lt, True
        k = _kind(ann)
        choices = typing.get_args(ann) if k == "literal" else ()
        out.append(Leaf(path, k, optional, choices, lo, lo_s, hi, hi_s))
    return out


def get(obj: Any, path: str) -> Any:
    """The value at a dotted path of a (pydantic or dict) scenario."""
    for part in path.split("."):
        if isinstance(obj, dict):
            obj = obj.get(part)
        else:
            obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def inside(leaf: Leaf, v: float) -> bool:
    """Whether ``v`` satisfies the leaf's bounds."""
    if leaf.lo is not None and (v < leaf.lo or (leaf.lo_strict and v == leaf.lo)):
        return False
    if leaf.hi is not None and (v > leaf.hi or (leaf.hi_strict and v == leaf.hi)):
        return False
    return math.isfinite(v)
