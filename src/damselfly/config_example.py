"""Example configs (``deploy/config/*.yaml``) generated from the models in :mod:`damselfly.config`.

Every key appears with its default, under the comment its field carries in
``config.py``: the ``#`` lines right above the field, the comment at the end of
its line, a ``Field(description=...)``, and each section's docstring. The
comments are read from the source with :mod:`ast` and :mod:`tokenize`, so a key
added to ``config.py`` with a comment shows up here without more work.

A default computed on the machine at start (``host.hostname``) is written
commented out, so the example stays the same on every machine and loading it
still computes the value.

Regenerate the committed examples with one command::

    python -m damselfly.config_example --write deploy/config

``--check DIR`` exits 1 when the files in DIR differ from what this module
writes (CI's test does the same).
"""

from __future__ import annotations

import argparse
import ast
import inspect
import io
import sys
import textwrap
import tokenize
from functools import cache
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from .config import DaemonConfig, SchedulerConfig

Kind = Literal["daemon", "scheduler"]
KINDS: dict[Kind, type[BaseModel]] = {"daemon": DaemonConfig, "scheduler": SchedulerConfig}
REGENERATE = "python -m damselfly.config_example --write deploy/config"
_INDENT = "  "

_HEADERS = {
    "daemon": (
        "Damselfly daemon (`damselfly daemon --config FILE`; `--seed` or seedPeer.enable for a seed).",
        "Command-line flags override these keys.",
    ),
    "scheduler": ("Damselfly scheduler (`damselfly scheduler --config FILE`).",),
}


@cache
def _field_comments(cls: type[BaseModel]) -> dict[str, list[str]]:
    """Field name -> the comment lines written beside it in ``cls``'s source."""
    try:
        lines, _ = inspect.getsourcelines(cls)
    except (OSError, TypeError):
        return {}
    source = textwrap.dedent("".join(lines))
    src_lines = source.splitlines()
    comments: dict[int, str] = {}  # line number (1-based) -> comment text
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    tree = ast.parse(source)
    out: dict[str, list[str]] = {}
    cls_node = tree.body[0]
    assert isinstance(cls_node, ast.ClassDef)
    for node in cls_node.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above: list[str] = []
        n = node.lineno - 1
        while n >= 1 and n in comments and src_lines[n - 1].lstrip().startswith("#"):
            above.insert(0, comments[n])
            n -= 1
        end = node.end_lineno or node.lineno
        inline = [comments[end]] if end in comments else []
        out[node.target.id] = [c for c in above + inline if c]
    return out


def _doc_lines(cls: type[BaseModel]) -> list[str]:
    """The class's own docstring (not one inherited), as comment lines."""
    doc = cls.__dict__.get("__doc__")
    if not isinstance(doc, str) or not doc.strip():
        return []
    return [line.rstrip() for line in inspect.cleandoc(doc).splitlines()]


def _comment(lines: list[str], indent: str) -> list[str]:
    return [f"{indent}# {line}".rstrip() for line in lines]


def _key(name: str, field: FieldInfo) -> str:
    return field.alias or name


def _scalar(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def _machine_default(field: FieldInfo) -> str | None:
    """The name of the function that computes a field's default at start, if it has one.

    A class or a lambda (``lambda: ["127.0.0.1:8002"]``) states its default; a named
    function (``socket.gethostname``) computes one that may differ from machine to machine.
    """
    factory = field.default_factory
    if factory is None or inspect.isclass(factory):
        return None
    name = str(getattr(factory, "__name__", "a function"))
    return None if name == "<lambda>" else name


def _item_model(field: FieldInfo) -> type[BaseModel] | None:
    """The model of a ``list[Model]`` field's items."""
    args = get_args(field.annotation)
    if len(args) == 1 and inspect.isclass(args[0]) and issubclass(args[0], BaseModel):
        return args[0]
    return None


def _item_keys(model: type[BaseModel]) -> list[str]:
    """One comment line per key of a list item's model, with its default and comment."""
    notes = _field_comments(model)
    out = []
    for name, field in model.model_fields.items():
        if field.is_required():
            default = "required"
        else:
            value = field.get_default(call_default_factory=True)
            if isinstance(value, BaseModel):
                value = value.model_dump(by_alias=True, mode="json")
            default = f"default {_scalar(value)}"
        words = " ".join(notes.get(name, []) + ([field.description] if field.description else []))
        out.append(f"  {_key(name, field)} ({default}){': ' + words if words else ''}")
    return out


def _section(model: BaseModel, indent: str) -> list[str]:
    cls = type(model)
    notes = _field_comments(cls)
    out: list[str] = []
    for name, field in cls.model_fields.items():
        if not indent and out:
            out.append("")  # a blank line between top-level sections
        key = _key(name, field)
        comment = list(notes.get(name, []))
        if field.description:
            comment.append(field.description)
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            doc = _doc_lines(type(value))
            out += _comment(comment + ([""] if comment and doc else []) + doc, indent)
            out.append(f"{indent}{key}:")
            out += _section(value, indent + _INDENT)
            continue
        item = _item_model(field)
        if item is not None:
            doc = _doc_lines(item)
            out += _comment([*comment, *doc, "Each item:", *_item_keys(item)], indent)
            dumped = [v.model_dump(by_alias=True, mode="json") for v in value]
            out.append(f"{indent}{key}: {_scalar(dumped)}")
            continue
        machine = _machine_default(field)
        if machine is not None:
            out += _comment([*comment, f"Default: computed on the machine at start ({machine}())."], indent)
            out.append(f"{indent}# {key}: ...")
            continue
        out += _comment(comment, indent)
        out.append(f"{indent}{key}: {_scalar(model.model_dump(by_alias=True, mode='json')[key])}")
    return out


def render(model: BaseModel, header: list[str]) -> str:
    """``model``'s values as commented YAML, under ``header`` (comment lines)."""
    return "\n".join([*_comment(header, ""), *_section(model, "")]) + "\n"


def example_yaml(kind: Kind) -> str:
    """The example config of ``kind`` (``daemon`` or ``scheduler``): every key, its default, its comment."""
    head = [
        *_HEADERS[kind],
        "Every key with its default. YAML keys are camelCase (snake_case is accepted too).",
        f"Generated from src/damselfly/config.py by `{REGENERATE}`: do not edit by hand.",
    ]
    return render(KINDS[kind](), head)


def write_examples(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for kind in KINDS:
        path = directory / f"{kind}.yaml"
        path.write_text(example_yaml(kind))
        paths.append(path)
    return paths


def stale_examples(directory: Path) -> list[Path]:
    """The example files in ``directory`` that are missing or differ from what would be written now."""
    stale = []
    for kind in KINDS:
        path = directory / f"{kind}.yaml"
        try:
            current = path.read_text()
        except FileNotFoundError:
            current = None
        if current != example_yaml(kind):
            stale.append(path)
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m damselfly.config_example",
        description="Print or write example configs generated from damselfly's config models.",
    )
    parser.add_argument("kind", nargs="?", choices=sorted(KINDS), help="print this one to stdout")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", type=Path, metavar="DIR", help="write daemon.yaml and scheduler.yaml here")
    group.add_argument("--check", type=Path, metavar="DIR", help="exit 1 if the files in DIR are stale")
    args = parser.parse_args(argv)
    if args.write:
        for path in write_examples(args.write):
            print(f"wrote {path}")
        return 0
    if args.check:
        stale = stale_examples(args.check)
        for path in stale:
            print(f"{path} is stale: regenerate with `{REGENERATE}`", file=sys.stderr)
        return 1 if stale else 0
    if not args.kind:
        parser.error("name a kind (daemon or scheduler), or give --write DIR or --check DIR")
    sys.stdout.write(example_yaml(args.kind))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
