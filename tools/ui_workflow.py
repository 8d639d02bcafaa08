"""Make the UI-format (drag-and-drop) workflow from an API-format one, so both stay in step.

    python tools/ui_workflow.py workflows/api/NAME.json > workflows/NAME.json

Widget values are written in each node's input order, taken from ComfyUI's core node definitions
(tests/data/comfyui_object_info-*.json) and this pack's nodes; nodes are laid out left to right by depth.
"""

import glob
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
SEED_INPUTS = {"seed", "noise_seed"}
UPLOAD_OPTIONS = ("image_upload", "video_upload")  # the frontend adds an 'upload' button widget after these


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


def ui_workflow(api: dict, definitions: dict) -> dict:
    """The UI-format graph (schema 0.4) equivalent to an API-format graph."""
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
            "id": int(node_id), "type": entry["class_type"], "pos": [60 + 360 * column, 60 + 260 * rows[column]],
            "size": [320, 200], "flags": {}, "order": len(nodes), "mode": 0, "inputs": inputs,
            "properties": {"Node name for S&R": entry["class_type"]}, "widgets_values": widgets,
            "title": entry.get("_meta", {}).get("title", entry["class_type"]),
        })
    for node in nodes:
        definition = definitions[node["type"]]
        names = definition.get("output_name", definition["output"])
        node["outputs"] = [{"name": names[slot], "type": kind, "links": outputs.get((node["id"], slot), []),
                            "slot_index": slot} for slot, kind in enumerate(definition["output"])]
    return {"last_node_id": max(n["id"] for n in nodes), "last_link_id": len(links), "nodes": nodes,
            "links": links, "groups": [], "config": {}, "extra": {}, "version": 0.4}


def main(argv=None) -> int:
    """Print the UI-format workflow for an API-format file."""
    argv = sys.argv[1:] if argv is None else argv
    with open(argv[0]) as handle:
        api = json.load(handle)
    json.dump(ui_workflow(api, node_definitions()), sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
