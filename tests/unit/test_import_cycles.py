"""Import cycles the structure rules out, read from the source: every import,
function-local and ``if TYPE_CHECKING`` ones included, and a module that
discovers its package's modules (``pkgutil.iter_modules``) counted as
importing each sibling that declares a ``FAMILY``."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "lxc_notify_plugin"


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _imports(path: Path) -> set[str]:
    name = _module(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    text = path.read_text()
    tree = ast.parse(text)
    found = set()
    if "pkgutil.iter_modules" in text:
        found |= {_module(sibling) for sibling in path.parent.glob("*.py")
                  if "\nFAMILY" in sibling.read_text()}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            target = f"{base}.{node.module}" if node.level and node.module else (
                base if node.level else node.module or "")
            names = {f"{target}.{alias.name}" for alias in node.names}
            found |= names
            # "from . import fs" imports the module fs; the package only when a
            # name is not a module of it (then the name is the package's own).
            if not all(_is_module(name) for name in names):
                found.add(target)
    return {m for m in found if m.startswith("lxc_notify_plugin")}


def _graph() -> dict[str, set[str]]:
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in _imports(path) if m in modules and m != name}
            for name, path in modules.items()}


def _reaches(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_no_module_is_on_an_import_cycle() -> None:
    """Not even through a function-local import or one made only for the type
    checker (the dispatcher and the listener transport were, until the
    transport took what it needs of the dispatcher as a Protocol)."""
    graph = _graph()
    assert not sorted(m for m in graph if m in _reaches(graph, m))


def test_no_policy_module_request_or_caller_task_is_on_an_import_cycle() -> None:
    graph = _graph()
    watched = [m for m in graph if m.startswith("lxc_notify_plugin.policy")] + [
        "lxc_notify_plugin.request", "lxc_notify_plugin.caller.task"]
    assert not [m for m in watched if m in _reaches(graph, m)]


def test_transports_reach_the_node_store_only_through_the_dispatcher() -> None:
    graph = _graph()
    for transport in ("lxc_notify_plugin.transport.lxc", "lxc_notify_plugin.transport.oci_agent",
                      "lxc_notify_plugin.transport.oci_state"):
        assert "lxc_notify_plugin.handlers.nodes" not in graph[transport]


def test_the_oci_wire_format_needs_neither_the_dispatcher_nor_policy() -> None:
    """Parsing a runtime's state is the wire format's one job (transport/oci_state.py):
    the agent's socket and the choice of a policy sit in modules of their own."""
    reached = _reaches(_graph(), "lxc_notify_plugin.transport.oci_state")
    assert not [m for m in reached if m.startswith(("lxc_notify_plugin.dispatch",
                                                    "lxc_notify_plugin.policy",
                                                    "lxc_notify_plugin.handlers"))]
