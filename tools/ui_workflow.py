"""Make the UI-format (drag-and-drop) workflow from an API-format one, so both stay in step.

    python tools/ui_workflow.py workflows/api/NAME.json > workflows/NAME.json
    python tools/ui_workflow.py --all         # every workflow in workflows/api/
    python tools/ui_workflow.py --gallery     # the README's workflow gallery table

Widget values are written in each node's input order, taken from ComfyUI's core node definitions
(tests/data/comfyui_object_info-*.json) and this pack's nodes; nodes are laid out left to right by depth.
Every node that loads a file listed in models/known_files.py carries `properties.models` (name, url,
directory: what ComfyUI's missing-models dialog reads), and a workflow described in tools/workflow_catalog.py
gets its title in `extra.info` and a Markdown note saying what it does and needs.
"""

import glob
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
SEED_INPUTS = {"seed", "noise_seed"}
UPLOAD_OPTIONS = ("image_upload", "video_upload")  # the frontend adds an 'upload' button widget after these
NOTE_WIDTH = 440  # the note sits in its own column on the left
INPUT_NODES = {"LoadVideo": "file", "LoadImage": "image"}  # nodes reading a file from ComfyUI's input folder


def node_definitions() -> dict:
    """Core ComfyUI node definitions plus this pack's, in /object_info's shape."""
    sys.path.insert(0, os.path.dirname(ROOT))
    from streamvace.nodes import NODE_CLASS_MAPPINGS

    path = sorted(glob.glob(os.path.join(ROOT, "tests", "data", "comfyui_object_info-*.json")))[-1]
    with open(path) as handle:
        definitions = json.load(handle)
    for name, node in NODE_CLASS_MAPPINGS.items():
        spec = node.INPUT_TYPES()
        definitions[name] = {
            "input": {k: spec.get(k, {}) for k in ("required", "optional")},
            "input_order": {k: list(spec.get(k, {})) for k in ("required", "optional")},
            "output": list(node.RETURN_TYPES),
            "output_name": list(getattr(node, "RETURN_NAMES", node.RETURN_TYPES)),
        }
    return definitions


def _is_widget(spec) -> bool:
    return isinstance(spec[0], list) or spec[0] in WIDGET_TYPES


def _input_order(definition: dict) -> list:
    return [(name, definition["input"][section][name]) for section in ("required", "optional")
            for name in definition.get("input_order", {}).get(section, definition["input"].get(section, {}))]


def widget_slots(entry: dict, definition: dict) -> list:
    """(input name, linked) for each value in the UI node's widgets_values ('control_after_generate' after seeds)."""
    slots = []
    for name, spec in _input_order(definition):
        if _is_widget(spec) and name in entry["inputs"]:
            value = entry["inputs"][name]
            linked = isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
            slots.append((name, linked))
            if name in SEED_INPUTS:
                slots.append(("control_after_generate", linked))
            if _uploads(spec):
                slots.append(("upload", linked))
    return slots


def _uploads(spec) -> bool:
    return len(spec) > 1 and isinstance(spec[1], dict) and any(spec[1].get(k) for k in UPLOAD_OPTIONS)


def _default(spec):
    options = spec[1] if len(spec) > 1 else {}
    if "default" in options:
        return options["default"]
    return spec[0][0] if isinstance(spec[0], list) and spec[0] else None


def _depths(graph: dict) -> dict:
    depth = {}

    def visit(node_id):
        if node_id not in depth:
            links = [v[0] for v in graph[node_id]["inputs"].values() if isinstance(v, list) and len(v) == 2]
            depth[node_id] = 1 + max((visit(source) for source in links), default=-1)
        return depth[node_id]

    for node_id in graph:
        visit(node_id)
    return depth


def _known_files():
    sys.path.insert(0, os.path.dirname(ROOT))
    from streamvace.models.known_files import KNOWN_FILES

    return KNOWN_FILES


def model_metadata(entry: dict) -> list:
    """properties.models for an API node: one entry per input naming a known model file, in input order."""
    known = _known_files()
    return [known[value].metadata() for value in entry["inputs"].values()
            if isinstance(value, str) and value in known]


def _catalog(name: str):
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    from workflow_catalog import WORKFLOWS

    return WORKFLOWS.get(name)


def note_text(api: dict, name: str) -> str:
    """The Markdown note of a workflow: what it does, how to use it, the model files and inputs it needs."""
    info = _catalog(name)
    lines = [f"# {info.title}", "", info.does, ""] + [f"- {line}" for line in info.how]
    models = {m["name"]: m for entry in api.values() for m in model_metadata(entry)}
    if models:
        lines += ["", "## Model files", ""]
        lines += [f"- `models/{m['directory']}/{m['name']}` from [{m['url'].split('/')[3]}/{m['url'].split('/')[4]}]"
                  f"({m['url']})" for m in models.values()]
    inputs = sorted({entry["inputs"][INPUT_NODES[entry["class_type"]]] for entry in api.values()
                     if entry["class_type"] in INPUT_NODES})
    if inputs:
        lines += ["", "## Inputs", "",
                  "Sample inputs ship with StreamVACE (copied into ComfyUI's input folder when it starts): "
                  + ", ".join(f"`{name}`" for name in inputs) + ". Upload your own on the load nodes."]
    return "\n".join(lines) + "\n"


def ui_workflow(api: dict, definitions: dict, workflow: str = None) -> dict:
    """The UI-format graph (schema 0.4) equivalent to an API-format graph, with its note when `workflow` (the file
    name without .json) is catalogued."""
    info = _catalog(workflow) if workflow else None
    left = 60 + (NOTE_WIDTH if info else 0)
    depth, rows = _depths(api), {}
    nodes, links = [], []
    outputs = {}  # (node id, slot) -> list of link ids
    for node_id in sorted(api, key=int):
        entry, definition = api[node_id], definitions[api[node_id]["class_type"]]
        inputs, widgets = [], []
        for name, spec in _input_order(definition):
            value = entry["inputs"].get(name)
            linked = isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
            widget = _is_widget(spec)
            if widget and name in entry["inputs"]:
                # a linked widget is a "converted" widget: it keeps a value slot, filled with its default
                widgets.append(_default(spec) if linked else value)
                if name in SEED_INPUTS:
                    widgets.append("fixed")
                if _uploads(spec):
                    widgets.append("image")
            if widget and not linked:
                continue
            if name in entry["inputs"] or name in definition["input"].get("required", {}):
                link_id = None
                if linked:
                    link_id = len(links) + 1
                    source, slot = value
                    kind = definitions[api[source]["class_type"]]["output"][slot]
                    links.append([link_id, int(source), slot, int(node_id), len(inputs), kind])
                    outputs.setdefault((int(source), slot), []).append(link_id)
                slot_entry = {"name": name, "type": spec[0] if isinstance(spec[0], str) else "COMBO", "link": link_id}
                if widget:
                    slot_entry["widget"] = {"name": name}
                inputs.append(slot_entry)
        column = depth[node_id]
        rows[column] = rows.get(column, -1) + 1
        nodes.append({
            "id": int(node_id), "type": entry["class_type"], "pos": [left + 360 * column, 60 + 260 * rows[column]],
            "size": [320, 200], "flags": {}, "order": len(nodes), "mode": 0, "inputs": inputs,
            "properties": {"Node name for S&R": entry["class_type"]}, "widgets_values": widgets,
            "title": entry.get("_meta", {}).get("title", entry["class_type"]),
        })
        models = model_metadata(entry)
        if models:
            nodes[-1]["properties"]["models"] = models
    for node in nodes:
        definition = definitions[node["type"]]
        names = definition.get("output_name", definition["output"])
        node["outputs"] = [{"name": names[slot], "type": kind, "links": outputs.get((node["id"], slot), []),
                            "slot_index": slot} for slot, kind in enumerate(definition["output"])]
    extra = {}
    if info:
        nodes.append({"id": max(n["id"] for n in nodes) + 1, "type": "MarkdownNote", "pos": [60, 60],
                      "size": [NOTE_WIDTH - 40, 520], "flags": {}, "order": len(nodes), "mode": 0, "inputs": [],
                      "outputs": [], "properties": {}, "widgets_values": [note_text(api, workflow)],
                      "title": "About this workflow", "color": "#432", "bgcolor": "#653"})
        extra = {"info": {"name": info.title, "description": info.does}}
    return {"last_node_id": max(n["id"] for n in nodes), "last_link_id": len(links), "nodes": nodes,
            "links": links, "groups": [], "config": {}, "extra": extra, "version": 0.4}


def gallery(api_folder: str = None) -> str:
    """The README's workflow gallery: one row per catalogued workflow (thumbnail, model files, what it does), then
    the model files they use with their folders and download links."""
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    from workflow_catalog import WORKFLOWS

    api_folder = api_folder or os.path.join(ROOT, "workflows", "api")
    rows = ["| workflow | thumbnail | model files it needs | what it does |", "|---|---|---|---|"]
    used = {}
    for name, info in WORKFLOWS.items():
        with open(os.path.join(api_folder, name + ".json")) as handle:
            api = json.load(handle)
        models = {m["name"]: m for entry in api.values() for m in model_metadata(entry)}
        used.update(models)
        files = ", ".join(f"`{m}`" for m in models) or "none"
        rows.append(f"| [{info.title}](workflows/{name}.json) | <img src=\"workflows/{name}.jpg\" width=\"200\"> "
                    f"| {files} | {info.does} |")
    known = _known_files()
    rows += ["", "| model file | put it in | download | what it is |", "|---|---|---|---|"]
    rows += [f"| `{m['name']}` | `models/{m['directory']}/{m['name'] + '/' if known[m['name']].folder else ''}` | [{m['url'].split('/')[3]}/{m['url'].split('/')[4]}]"
             f"({m['url']}) | {known[m['name']].what} |" for m in sorted(used.values(), key=lambda m: m["directory"])]
    return "\n".join(rows) + "\n"


def _write(api_path: str, definitions: dict, out) -> None:
    with open(api_path) as handle:
        api = json.load(handle)
    json.dump(ui_workflow(api, definitions, os.path.splitext(os.path.basename(api_path))[0]), out, indent=1)
    out.write("\n")


def main(argv=None) -> int:
    """Print the UI-format workflow for an API-format file, write all of them (--all), or print the gallery."""
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--gallery"]:
        sys.stdout.write(gallery())
    elif argv == ["--all"]:
        definitions = node_definitions()
        for path in sorted(glob.glob(os.path.join(ROOT, "workflows", "api", "*.json"))):
            with open(os.path.join(ROOT, "workflows", os.path.basename(path)), "w") as out:
                _write(path, definitions, out)
    else:
        _write(argv[0], node_definitions(), sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
