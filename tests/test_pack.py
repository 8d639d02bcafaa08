"""The pack as a whole: it loads as a ComfyUI node pack and as the `streamvace` package, keeps its layers apart,
documents itself, and its README shows exactly what CI runs."""

import ast
import inspect
import os
import re
import subprocess
import sys

import pytest

import streamvace
from streamvace.nodes import LOAD_ERRORS, NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENGINE_DIRS = ("models", "annotators")
COMFY_MODULES = {"comfy", "folder_paths", "server", "comfy_api", "comfy_extras", "node_helpers", "nodes"}


def _python_files(*folders):
    for folder in folders:
        for directory, _, files in os.walk(os.path.join(ROOT, folder)):
            for name in files:
                if name.endswith(".py"):
                    yield os.path.join(directory, name)


def test_every_node_module_loads():
    assert not LOAD_ERRORS, f"node modules failed to import: {LOAD_ERRORS}"


def test_root_exports_the_node_mappings():
    assert streamvace.NODE_CLASS_MAPPINGS is NODE_CLASS_MAPPINGS
    assert set(NODE_DISPLAY_NAME_MAPPINGS) <= set(NODE_CLASS_MAPPINGS)


@pytest.mark.parametrize("name", sorted(NODE_CLASS_MAPPINGS))
def test_node_declares_a_complete_v1_interface(name):
    node = NODE_CLASS_MAPPINGS[name]
    spec = node.INPUT_TYPES()
    assert set(spec) <= {"required", "optional", "hidden"}
    assert isinstance(node.RETURN_TYPES, tuple)
    if hasattr(node, "RETURN_NAMES"):
        assert len(node.RETURN_NAMES) == len(node.RETURN_TYPES)
    assert callable(getattr(node, node.FUNCTION))
    assert node.CATEGORY.startswith("StreamVACE")
    assert node.DESCRIPTION.strip(), f"{name} needs a DESCRIPTION for the node library"
    accepted = set(inspect.signature(getattr(node, node.FUNCTION)).parameters) - {"self"}
    declared = {k for section in spec.values() for k in section}
    has_kwargs = any(p.kind == p.VAR_KEYWORD for p in inspect.signature(getattr(node, node.FUNCTION)).parameters.values())
    assert has_kwargs or declared <= accepted, f"{name}.{node.FUNCTION} does not accept {declared - accepted}"


@pytest.mark.parametrize("path", list(_python_files(*ENGINE_DIRS)), ids=lambda p: os.path.relpath(p, ROOT))
def test_engine_never_imports_comfyui(path):
    tree = ast.parse(open(path).read())
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        for name in names:
            assert name.split(".")[0] not in COMFY_MODULES, f"{path} imports {name}: only nodes/ may touch ComfyUI"


@pytest.mark.parametrize("path", list(_python_files("models", "annotators", "nodes", "benchmarks", "cli")),
                         ids=lambda p: os.path.relpath(p, ROOT))
def test_public_functions_have_docstrings(path):
    tree = ast.parse(open(path).read())
    missing = []
    for scope in [tree] + [n for n in tree.body if isinstance(n, ast.ClassDef)]:
        for node in scope.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                if ast.get_docstring(node) is None:
                    missing.append(node.name)
    assert not missing, f"{os.path.relpath(path, ROOT)}: public definitions without a docstring: {missing}"


def test_readme_shows_exactly_what_ci_runs():
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    block = re.search(r"# --- README test command.*?\n(.*?)# --- end ---", ci, re.S).group(1).strip()
    readme = open(os.path.join(ROOT, "README.md")).read()
    assert f"```bash\n{block}\n```" in readme


COMFY_CLI = os.path.join(os.path.dirname(sys.executable), "comfy")


@pytest.mark.skipif(not os.path.exists(COMFY_CLI), reason="comfy-cli is not installed (pip install -e '.[test]')")
def test_pyproject_passes_comfy_registry_validation():
    result = subprocess.run([COMFY_CLI, "--skip-prompt", "--no-enable-telemetry", "node", "validate"],
                            cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "passed" in result.stdout + result.stderr, result.stdout + result.stderr


def test_every_input_and_output_has_a_tooltip():
    missing = []
    for name, node in sorted(NODE_CLASS_MAPPINGS.items()):
        for section in node.INPUT_TYPES().values():
            for input_name, spec in section.items():
                options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                if not str(options.get("tooltip", "")).strip():
                    missing.append(f"{name}.{input_name}")
        tooltips = getattr(node, "OUTPUT_TOOLTIPS", ())
        if len(tooltips) != len(node.RETURN_TYPES) or not all(str(t).strip() for t in tooltips):
            missing.append(f"{name} outputs ({len(tooltips)} tooltips for {len(node.RETURN_TYPES)} outputs)")
    assert not missing, f"{len(missing)} without a tooltip: {missing}"
