"""Every bundled workflow uses only nodes, inputs and types that exist: ComfyUI's core nodes (from a real
server's /object_info, tests/data) plus this pack's nodes. UI-format graphs in workflows/, API-format
graphs in workflows/api/."""

import glob
import json
import math
import os

import pytest

from streamvace.nodes import NODE_CLASS_MAPPINGS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OBJECT_INFO = os.path.join(ROOT, "tests", "data", "comfyui_object_info-0.3.64.json")
UI_WORKFLOWS = sorted(glob.glob(os.path.join(ROOT, "workflows", "*.json")))
API_WORKFLOWS = sorted(glob.glob(os.path.join(ROOT, "workflows", "api", "*.json")))
MODEL_FILE_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".gguf")
UI_ONLY_NODES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
SAMPLE_INPUTS = os.path.join(ROOT, "workflows", "inputs")
INPUT_FOLDER_WIDGETS = {("LoadImage", "image"), ("LoadVideo", "file")}  # list ComfyUI's input folder


def _our_object_info():
    info = {}
    for name, node in NODE_CLASS_MAPPINGS.items():
        spec = node.INPUT_TYPES()
        info[name] = {
            "input": {section: spec.get(section, {}) for section in ("required", "optional")},
            "output": list(node.RETURN_TYPES),
        }
    return info


def _definitions():
    with open(OBJECT_INFO) as handle:
        definitions = json.load(handle)
    ours = _our_object_info()
    assert not set(ours) & set(definitions), "a StreamVACE node id collides with a core ComfyUI node"
    definitions.update(ours)
    return definitions


DEFINITIONS = _definitions()


def _input_type(spec):
    kind = spec[0]
    return "COMBO" if isinstance(kind, list) else kind


def _inputs(class_type):
    sections = DEFINITIONS[class_type]["input"]
    return {**sections.get("required", {}), **sections.get("optional", {})}


def _types_match(produced, expected):
    return "*" in (produced, expected) or produced == expected or (
        expected == "COMBO" and produced in ("COMBO", "*"))


def _check_literal(class_type, name, spec, value):
    kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
    where = f"{class_type}.{name}"
    if (class_type, name) in INPUT_FOLDER_WIDGETS:
        # the pack copies its sample inputs into ComfyUI's input folder (nodes/sample_inputs.py)
        assert value in os.listdir(SAMPLE_INPUTS), f"{where}: {value!r} is not shipped in workflows/inputs/"
    elif isinstance(kind, list):
        # model-file combos list the user's files: a graph may name a file this machine does not have
        if kind and not str(value).lower().endswith(MODEL_FILE_SUFFIXES):
            assert value in kind, f"{where}: {value!r} is not one of {kind}"
    elif kind == "COMBO":
        allowed = options.get("options") or []
        assert not allowed or value in allowed, f"{where}: {value!r} is not one of {allowed}"
    elif kind in ("INT", "FLOAT"):
        assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{where}: {value!r} is not a number"
        assert math.isfinite(value)
        assert options.get("min", -math.inf) <= value <= options.get("max", math.inf), f"{where}: {value} out of range"
        if kind == "INT":
            assert float(value).is_integer(), f"{where}: {value} is not an integer"
    elif kind == "BOOLEAN":
        assert isinstance(value, bool), f"{where}: {value!r} is not a boolean"
    elif kind == "STRING":
        assert isinstance(value, str), f"{where}: {value!r} is not a string"
    else:
        raise AssertionError(f"{where}: a {kind} input must be linked, not given the literal {value!r}")


def test_there_are_workflows_in_both_formats():
    if not NODE_CLASS_MAPPINGS:
        pytest.skip("no nodes yet")
    assert UI_WORKFLOWS and API_WORKFLOWS


@pytest.mark.parametrize("path", API_WORKFLOWS, ids=os.path.basename)
def test_api_workflow_is_valid(path):
    with open(path) as handle:
        graph = json.load(handle)
    assert any(DEFINITIONS[n["class_type"]].get("output_node") or n["class_type"] in NODE_CLASS_MAPPINGS
               and getattr(NODE_CLASS_MAPPINGS[n["class_type"]], "OUTPUT_NODE", False)
               for n in graph.values()), "an API workflow needs an output node"
    for node_id, node in graph.items():
        class_type = node["class_type"]
        assert class_type in DEFINITIONS, f"node {node_id}: unknown node type {class_type}"
        declared = _inputs(class_type)
        required = DEFINITIONS[class_type]["input"].get("required", {})
        assert set(required) <= set(node["inputs"]), f"node {node_id} ({class_type}) lacks {set(required) - set(node['inputs'])}"
        for name, value in node["inputs"].items():
            assert name in declared, f"node {node_id} ({class_type}) has no input {name!r}"
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                source = graph[value[0]]
                produced = DEFINITIONS[source["class_type"]]["output"][value[1]]
                assert _types_match(produced, _input_type(declared[name])), (
                    f"node {node_id}.{name}: {source['class_type']} gives {produced}, needs {_input_type(declared[name])}")
            else:
                _check_literal(class_type, name, declared[name], value)


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=os.path.basename)
def test_ui_workflow_is_valid(path):
    with open(path) as handle:
        graph = json.load(handle)
    nodes = {node["id"]: node for node in graph["nodes"]}
    for node in nodes.values():
        if node["type"] in UI_ONLY_NODES:
            continue
        assert node["type"] in DEFINITIONS, f"unknown node type {node['type']}"
        declared = _inputs(node["type"])
        for slot in node.get("inputs", []):
            assert slot["name"] in declared, f"{node['type']} has no input {slot['name']!r}"
    for link_id, source, source_slot, target, target_slot, link_type in graph["links"]:
        produced = DEFINITIONS[nodes[source]["type"]]["output"][source_slot]
        target_input = nodes[target]["inputs"][target_slot]
        expected = _input_type(_inputs(nodes[target]["type"])[target_input["name"]])
        assert target_input["link"] == link_id, f"link {link_id} is not recorded on its target input"
        assert _types_match(produced, link_type) and _types_match(link_type, expected), (
            f"link {link_id}: {nodes[source]['type']} gives {produced}, {nodes[target]['type']}.{target_input['name']} needs {expected}")


@pytest.mark.parametrize("path", API_WORKFLOWS, ids=os.path.basename)
def test_ui_twin_matches_the_api_workflow(path):
    """Same nodes, links and widget values as tools/ui_workflow.py makes from the API graph; the UI twin may add
    notes and name real model files where the API graph names placeholders (strings may differ)."""
    import sys

    sys.path.insert(0, os.path.join(ROOT, "tools"))
    from ui_workflow import node_definitions, ui_workflow, widget_slots

    twin = os.path.join(ROOT, "workflows", os.path.basename(path))
    assert os.path.exists(twin), f"{os.path.basename(path)} has no UI-format twin in workflows/"
    definitions = node_definitions()
    with open(path) as api, open(twin) as ui:
        graph = json.load(api)
        expected, got = ui_workflow(graph, definitions, os.path.basename(path)[:-len(".json")]), json.load(ui)
    hint = f"regenerate it: python tools/ui_workflow.py {os.path.relpath(path, ROOT)} > {os.path.relpath(twin, ROOT)}"
    nodes = {n["id"]: n for n in got["nodes"] if n["type"] not in UI_ONLY_NODES}
    wanted = [n for n in expected["nodes"] if n["type"] not in UI_ONLY_NODES]
    assert sorted(nodes) == sorted(n["id"] for n in wanted), hint
    for want in wanted:
        have = nodes[want["id"]]
        assert have["type"] == want["type"], hint
        slots = widget_slots(graph[str(want["id"])], definitions[want["type"]])
        assert len(have["widgets_values"]) == len(slots), f"{want['type']}: {hint}"
        for (name, linked), value, default in zip(slots, have["widgets_values"], want["widgets_values"]):
            if not linked and not isinstance(default, str):  # linked widgets' values are unused
                assert value == default, f"{want['type']}.{name}: {value!r} != {default!r}; {hint}"
    links = lambda g: sorted((l[1], l[2], l[3], l[5]) for l in g["links"])  # noqa: E731
    assert links(got) == links(expected), hint
