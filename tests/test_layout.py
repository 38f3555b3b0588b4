"""The package's layout, checked from its source: layers import only downwards, there are
no import circles, every reach into torch's or Triton's internals is in ``artcache/_torch/``,
and modules stay small.

Every ``import`` counts, wherever it is: at the top, inside a function, or under
``TYPE_CHECKING``.  The layers (README's tree lists the same order)::

    0  errors, digest, config, _version          what everything uses
    1  entry, keys, code_digest, environment,     the data model: manifests, keys and
       signing, blob_codec, frame_entry,          their factors, signatures, blob encodings,
       shape_expr                                 precompiled frame entries and shape guards
    2  store/, activity                           bytes in, bytes out; the per-machine log
                                                  kept beside the local tier
    3  entries, single_flight                     whole entries in a store: trust, errors, stats;
                                                  one compile for many processes
    4  pickler/                                   the safe serializer and its codecs
    5  _torch/                                    every reach into torch and Triton internals
    6  bundler, output_code, backend, frames,     the compile path; the precompile tier
       frame_replay, frame_hook, frame_resume,
       chain_capture, code_records
    7  cache, archive, catalog, explain,          the public facade and the tools
       summary_view, cli, testing/, __init__
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "artcache"

LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"errors", "digest", "config", "_version"}),
    frozenset({"entry", "keys", "code_digest", "environment", "signing", "blob_codec", "weights", "frame_entry",
               "shape_expr"}),
    frozenset({"store", "activity"}),
    frozenset({"entries", "single_flight"}),
    frozenset({"pickler"}),
    frozenset({"_torch"}),
    frozenset({"bundler", "output_code", "backend", "frames", "frame_replay", "frame_hook", "frame_resume",
               "chain_capture", "code_records"}),
    frozenset({"cache", "archive", "catalog", "explain", "summary_view", "cli_io", "cli", "testing", "__init__"}),
)
# Private namespaces whose use marks a reach into torch's or Triton's internals.
PRIVATE = ("torch._inductor", "torch._functorch", "torch._dynamo", "triton")
MAX_LINES = 600


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


MODULES = _modules()


def _unit(module: str) -> str:
    """The layer unit of a module: its top-level name under ``artcache`` (a package counts
    as one unit), ``__init__`` for the package root."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _layer(module: str) -> int:
    unit = _unit(module)
    for index, names in enumerate(LAYERS):
        if unit in names:
            return index
    raise AssertionError(f"{module} is in no layer: add it to LAYERS (and README's tree)")


def _resolve_from(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str) -> Iterator[tuple[str, int]]:
    """Every module ``module`` imports (artcache modules resolved to the file imported;
    others by their dotted name), with the line."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            target = _resolve_from(module, node, is_package)
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                yield (candidate if candidate in MODULES else target), node.lineno


def _internal_edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    for module in MODULES:
        for target, _ in imports_of(module):
            if target in MODULES and target != module:
                edges[module].add(target)
    return edges


def test_every_module_has_a_layer() -> None:
    for module in MODULES:
        _layer(module)


def test_imports_only_go_down() -> None:
    upward = []
    for module in MODULES:
        for target, line in imports_of(module):
            if target in MODULES and target != "artcache" and _layer(target) > _layer(module):
                upward.append(f"{MODULES[module].relative_to(PACKAGE.parent)}:{line} imports {target}")
            if target == "artcache" and module != "artcache":
                upward.append(f"{MODULES[module].relative_to(PACKAGE.parent)}:{line} imports the package root")
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(upward)


def test_no_import_circles() -> None:
    edges = _internal_edges()
    # Tarjan's strongly connected components: any component of more than one module is a circle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"


def _private_reaches(module: str) -> Iterator[str]:
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    for target, line in imports_of(module):
        if target.startswith(PRIVATE) and (target in PRIVATE or target.startswith(tuple(p + "." for p in PRIVATE))):
            yield f"line {line}: import {target}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            dotted = _dotted(node)
            if dotted and dotted.startswith(tuple(p + "." for p in PRIVATE[:3])) or dotted in PRIVATE[:3]:
                yield f"line {node.lineno}: {dotted}"


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def test_torch_internals_only_in_the_torch_folder() -> None:
    found = []
    for module in MODULES:
        if _unit(module) == "_torch":
            continue
        found += [f"{MODULES[module].relative_to(PACKAGE.parent)} {reach}" for reach in _private_reaches(module)]
    assert not found, "reaches into torch/Triton internals outside artcache/_torch/:\n" + "\n".join(sorted(set(found)))


def test_the_torch_folder_names_the_versions_it_was_checked_on() -> None:
    doc = ast.get_docstring(ast.parse((PACKAGE / "_torch" / "__init__.py").read_text())) or ""
    for module in sorted(m for m in MODULES if _unit(m) == "_torch" and m != "artcache._torch"):
        assert module.rsplit(".", 1)[1] in doc, f"{module} is missing from the version table in _torch/__init__.py"
    assert "2.11" in doc and "2.13" in doc


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_stay_small(module: str) -> None:
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[module]} has {lines} lines (at most {MAX_LINES})"


def test_the_checks_can_fail(tmp_path: Path) -> None:
    """The resolver sees a lazy upward import and an attribute reach (the rules' inputs)."""
    source = "def f():\n    from .backend import ArtcacheBackend\n    import torch\n    return torch._inductor.config\n"
    probe = PACKAGE / "errors.py"
    tree = ast.parse(source)
    froms = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert _resolve_from("artcache.errors", froms[0], probe.name == "__init__.py") == "artcache.backend"
    assert any(_dotted(n) == "torch._inductor.config" for n in ast.walk(tree) if isinstance(n, ast.Attribute))
