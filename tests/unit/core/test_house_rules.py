"""The house rules of ``src/damselfly``, checked so the house stays readable as it grows.

* No module over 600 lines; one over 500 says why in its docstring (a line
  starting ``Long because``).
* No folder with more than 18 modules directly in it.
* Protobuf only at the RPC edge: ``damselfly.api`` and modules whose job is an
  RPC edge (named ``*service``, ``*rpc``, ``*client``, ``app``, or under
  ``cli/`` and ``testbed/``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import damselfly

ROOT = Path(damselfly.__file__).parent
MAX_LINES = 600
LINES_WITHOUT_A_REASON = 500
MAX_MODULES_PER_FOLDER = 18
EDGE_SUFFIXES = ("service", "rpc", "client")


def _modules() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if "__pycache__" not in p.parts)


def _is_edge(path: Path) -> bool:
    rel = path.relative_to(ROOT)
    if rel.parts[0] in {"api", "cli", "testbed"}:
        return True
    return path.stem == "app" or path.stem.endswith(EDGE_SUFFIXES)


def _imports_protobuf(tree: ast.Module) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            names = [a.name for a in node.names]
            module = node.module or ""
            if module.endswith("_pb2") or module.endswith("_pb2_grpc"):
                found.append(module)
            found.extend(f"{module}.{n}" for n in names if n.endswith(("_pb2", "_pb2_grpc")))
        elif isinstance(node, ast.Import):
            found.extend(a.name for a in node.names if a.name.endswith(("_pb2", "_pb2_grpc")))
    return found


def test_no_module_is_over_the_line_limit_and_a_long_one_says_why() -> None:
    too_long = []
    for path in _modules():
        text = path.read_text()
        lines = text.count("\n")
        doc = ast.get_docstring(ast.parse(text)) or ""
        if lines > MAX_LINES or (lines > LINES_WITHOUT_A_REASON and "Long because" not in doc):
            too_long.append(f"{path.relative_to(ROOT)}: {lines} lines")
    assert too_long == []


def test_no_folder_holds_too_many_modules() -> None:
    crowded = []
    for folder in {p.parent for p in _modules()}:
        count = sum(1 for p in folder.glob("*.py"))
        if count > MAX_MODULES_PER_FOLDER:
            crowded.append(f"{folder.relative_to(ROOT.parent)}: {count} modules")
    assert crowded == []


def test_protobuf_stays_at_the_rpc_edge() -> None:
    offenders = []
    for path in _modules():
        if _is_edge(path):
            continue
        found = _imports_protobuf(ast.parse(path.read_text()))
        if found:
            offenders.append(f"{path.relative_to(ROOT)}: {', '.join(sorted(set(found)))}")
    assert offenders == []
