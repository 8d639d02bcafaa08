"""The house's layout: the engine imports without the node layer or transformers, the package's import graph
has no cycles, and the README's layout table names the folders that exist."""

import ast
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "streamvace"
SKIP_DIRS = {".git", ".venv", "tests", "benchmarks", "tools", "workflows", "__pycache__", ".ci", "build"}


def _modules():
    """{dotted module name: path} for every module of the package."""
    found = {}
    for directory, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.startswith(".")]
        for name in files:
            if name.endswith(".py") and name != "__main__.py":
                rel = os.path.relpath(os.path.join(directory, name), ROOT)[:-3].split(os.sep)
                if rel[-1] == "__init__":
                    rel = rel[:-1]
                found[".".join([PACKAGE] + rel)] = os.path.join(directory, name)
    return found


def _imports(module: str, path: str, modules: dict) -> set:
    """Package modules that `module` imports at module level or inside functions (every edge counts)."""
    package = module if path.endswith("__init__.py") else module.rsplit(".", 1)[0]
    edges = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            for alias in node.names:
                target = f"{base}.{alias.name}"
                edges.add(target if target in modules else base)
        elif isinstance(node, ast.Import):
            edges.update(alias.name for alias in node.names)
    return {e for e in edges if e in modules and e != module}


def test_import_graph_has_no_cycles():
    modules = _modules()
    graph = {m: _imports(m, p, modules) for m, p in modules.items()}
    graph[PACKAGE] = set()  # the root reaches the node layer only through its lazy __getattr__
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(n):] + [n]))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)


@pytest.mark.parametrize("module", ["streamvace.models.wan.kv_cache", "streamvace.models.wan.stream_session",
                                    "streamvace.models.vae.wan_vae", "streamvace.cli"])
def test_engine_and_cli_import_without_nodes_or_transformers(module):
    code = (f"import sys, {module}; loaded = [m for m in ('streamvace.nodes', 'transformers', 'comfy') "
            "if m in sys.modules]; print(loaded); sys.exit(1 if loaded else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"importing {module} loaded {result.stdout.strip()} {result.stderr[-2000:]}"


def test_readme_layout_table_matches_the_tree():
    readme = open(os.path.join(ROOT, "README.md")).read()
    table = readme[readme.index("## Layout"):]
    table = table[:table.index("\n## ", 4)]
    listed = set(re.findall(r"^\| `([^`]+)/` \|", table, re.M))
    folders = {d for d in os.listdir(ROOT) if os.path.isdir(os.path.join(ROOT, d)) and not d.startswith(".")
               and d not in {"build", "__pycache__"} and not d.endswith(".egg-info")}
    families = {f"models/{d}" for d in os.listdir(os.path.join(ROOT, "models"))
                if os.path.isdir(os.path.join(ROOT, "models", d)) and d != "__pycache__"}
    assert listed == folders | families, f"README layout lists {sorted(listed)}, the tree has {sorted(folders | families)}"
