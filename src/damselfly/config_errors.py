"""Configuration errors as one line each: the key's path, what is wrong, the nearest known key."""

from __future__ import annotations

import difflib
from typing import Any

import yaml
from pydantic import BaseModel


def yaml_problem(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark is not None else problem


def validation_problem(model: type[BaseModel], err: Any) -> str:
    """One pydantic error as ``section.key: what is wrong`` (an unknown key with the nearest known)."""
    loc = tuple(err.get("loc", ()))
    key = (
        "".join(f"[{p}]" if isinstance(p, int) else f".{_name(p)}" for p in loc).lstrip(".") or "(top level)"
    )
    if err.get("type") == "extra_forbidden":
        known = _known_keys(model, loc[:-1])
        near = difflib.get_close_matches(str(loc[-1]), known, n=1) if loc else []
        return f"{key}: unknown key" + (f" (did you mean {near[0]}?)" if near else "")
    given = err.get("input")
    shown = repr(given) if len(repr(given)) <= 60 else repr(given)[:57] + "..."
    got = "" if err.get("type") == "missing" else f", got {shown}"
    what = " ".join(str(err.get("msg", "invalid")).lower().split())
    return f"{key}: {what}{got}"


def _name(part: Any) -> str:
    """A key as written, or quoted when it has characters that would make the line ambiguous."""
    text = str(part)
    return text if text and all(c.isalnum() or c in "_-" for c in text) else repr(text)


def _known_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys (camelCase) of the section at ``loc`` in ``model``; [] where it cannot tell."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue  # an item of a list: the list's own section type is current already
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = next((f for name, f in current.model_fields.items() if part in (name, f.alias)), None)
        if field is None:
            return []
        current = field.annotation
        inner = [
            a for a in getattr(current, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)
        ]
        if inner:
            current = inner[0]  # list[Section], Section | None
    if not (isinstance(current, type) and issubclass(current, BaseModel)):
        return []
    return [f.alias or name for name, f in current.model_fields.items()]
