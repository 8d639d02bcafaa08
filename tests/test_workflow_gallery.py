"""What a user meets when a bundled workflow opens: the missing-models metadata on every loader (the shape
ComfyUI's frontend and Comfy-Org's own templates use: properties.models = [{name, url, directory}]), a title and
a note, a thumbnail for the template browser, the sample inputs the graph loads, and the README's gallery."""

import glob
import json
import os
import re
import sys

import numpy as np
import pytest

from streamvace.models.known_files import KNOWN_FILES, known_file
from streamvace.nodes.annotator_common import (DEPTH_FOLDER, DETECTION_FOLDER, POSE_FOLDER, RAFT_FOLDER,
                                               SAM2_FOLDER, SCRIBBLE_FOLDER)
from streamvace.nodes.dreamlite_nodes import ADAPTER_FOLDER

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
from ui_workflow import INPUT_NODES, gallery, node_definitions, widget_slots  # noqa: E402
from workflow_catalog import WORKFLOWS  # noqa: E402

UI_WORKFLOWS = sorted(glob.glob(os.path.join(ROOT, "workflows", "*.json")))
NAMES = [os.path.basename(path)[:-len(".json")] for path in UI_WORKFLOWS]
MODEL_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".gguf", ".sft")
# Which ComfyUI model folder each model-picking input lists (the pack's own folder constants where it has them)
LOADER_FOLDERS = {
    ("StreamVACEModelLoader", "model_name"): "diffusion_models",
    ("StreamVACEModelLoader", "vace_module"): "diffusion_models",
    ("StreamVACELora", "lora_name"): "loras",
    ("StreamVACELoadWanVAE", "vae_name"): "vae",
    ("StreamVACELoadTinyVAE", "vae_name"): "vae_approx",
    ("CLIPLoader", "clip_name"): "text_encoders",
    ("StreamVACEDepth", "model"): DEPTH_FOLDER,
    ("StreamVACEPose", "pose_model"): POSE_FOLDER,
    ("StreamVACEPose", "detector"): DETECTION_FOLDER,
    ("StreamVACESAM2", "model"): SAM2_FOLDER,
    ("StreamVACEScribble", "line_model"): SCRIBBLE_FOLDER,
    ("StreamVACEFlow", "raft_model"): RAFT_FOLDER,
    ("StreamVACEDreamLiteLoader", "model"): "diffusers",
    ("StreamVACEDreamLiteLoader", "lllite"): ADAPTER_FOLDER,
}
HF_FILE = re.compile(r"^https://huggingface\.co/[\w.-]+/[\w.-]+/resolve/main/[\w./-]+$")
HF_REPO = re.compile(r"^https://huggingface\.co/[\w.-]+/[\w.-]+(/tree/[\w.-]+)?$")


def _load(name):
    with open(os.path.join(ROOT, "workflows", name + ".json")) as handle:
        ui = json.load(handle)
    with open(os.path.join(ROOT, "workflows", "api", name + ".json")) as handle:
        api = json.load(handle)
    return ui, api


def _model_widgets(ui: dict, api: dict, definitions: dict):
    """(UI node, input name, value) for every widget of the UI graph that names a model file or model folder."""
    for node in ui["nodes"]:
        if node["type"] not in definitions:
            continue
        slots = widget_slots(api[str(node["id"])], definitions[node["type"]])
        for (input_name, linked), value in zip(slots, node["widgets_values"]):
            if linked or not isinstance(value, str) or value == "none":
                continue
            if value.lower().endswith(MODEL_SUFFIXES) or value in KNOWN_FILES or \
                    (node["type"], input_name) in LOADER_FOLDERS:
                yield node, input_name, value


@pytest.fixture(scope="module")
def definitions():
    return node_definitions()


def test_known_files_are_hugging_face_downloads():
    for entry in KNOWN_FILES.values():
        if entry.folder:
            assert HF_REPO.match(entry.url), f"{entry.name}: {entry.url} is not a Hugging Face repository page"
        else:
            assert HF_FILE.match(entry.url), f"{entry.name}: {entry.url} is not a Hugging Face file download"
            assert entry.url.endswith(os.path.splitext(entry.name)[1]), f"{entry.name}: {entry.url} is another kind"
        assert entry.directory and "/" not in entry.directory
    with pytest.raises(KeyError, match="known_files.py"):
        known_file("no_such_model.safetensors")


@pytest.mark.parametrize("name", NAMES)
def test_every_model_a_workflow_loads_carries_its_download_metadata(name, definitions):
    ui, api = _load(name)
    seen = 0
    for node, input_name, value in _model_widgets(ui, api, definitions):
        where = f"{name}: {node['type']}.{input_name} = {value!r}"
        assert (node["type"], input_name) in LOADER_FOLDERS, f"{where}: which model folder does it list?"
        entry = known_file(value)
        assert entry.directory == LOADER_FOLDERS[node["type"], input_name], f"{where}: {entry.directory} is wrong"
        models = node["properties"].get("models")
        assert isinstance(models, list), f"{where}: the node has no properties.models for the missing-models dialog"
        assert {"name": value, "url": entry.url, "directory": entry.directory} in models, where
        assert all(set(model) == {"name", "url", "directory"} and all(isinstance(v, str) for v in model.values())
                   for model in models), f"{where}: properties.models entries are {{name, url, directory}}"
        seen += 1
    assert seen, f"{name} loads no model file"


@pytest.mark.parametrize("name", NAMES)
def test_every_workflow_has_a_title_a_note_and_titled_nodes(name):
    ui, api = _load(name)
    assert name in WORKFLOWS, f"{name} is not described in tools/workflow_catalog.py"
    assert ui["extra"]["info"]["name"] == WORKFLOWS[name].title
    notes = [node for node in ui["nodes"] if node["type"] in ("MarkdownNote", "Note")]
    assert len(notes) == 1, f"{name} needs one note saying what it needs and does"
    text = notes[0]["widgets_values"][0]
    assert WORKFLOWS[name].does in text
    for node in ui["nodes"]:
        assert node.get("title") and node["title"] != node["type"], f"{name}: node {node['id']} has no readable title"
        for model in node["properties"].get("models", []):
            assert f"models/{model['directory']}/{model['name']}" in text and model["url"] in text, (
                f"{name}: the note does not say where {model['name']} goes or comes from")
    for entry in api.values():
        if entry["class_type"] in INPUT_NODES:
            assert entry["inputs"][INPUT_NODES[entry["class_type"]]] in text, f"{name}: the note misses an input"


@pytest.mark.parametrize("name", NAMES)
def test_every_workflow_has_a_thumbnail(name):
    from PIL import Image

    path = os.path.join(ROOT, "workflows", name + ".jpg")
    assert os.path.isfile(path), f"{name} has no thumbnail: python tools/thumbnails.py {name}"
    with Image.open(path) as image:
        assert image.format == "JPEG" and image.size == (640, 400)
        pixels = np.asarray(image.convert("L"), np.float32)
    assert pixels[80:].std() > 20, f"{path} looks blank"
    assert os.path.getsize(path) < 100_000


def test_no_thumbnail_without_a_workflow():
    stray = {os.path.basename(p)[:-4] for p in glob.glob(os.path.join(ROOT, "workflows", "*.jpg"))} - set(NAMES)
    assert not stray, f"thumbnails without a workflow: {stray}"


def test_readme_gallery_lists_every_workflow():
    with open(os.path.join(ROOT, "README.md")) as handle:
        readme = handle.read()
    start, end = "<!-- gallery: python tools/ui_workflow.py --gallery -->", "<!-- end of gallery -->"
    assert start in readme and end in readme
    table = readme.split(start)[1].split(end)[0].strip() + "\n"
    assert table == gallery(), "the README gallery is stale: regenerate it with python tools/ui_workflow.py --gallery"
    for name in NAMES:
        assert f"workflows/{name}.json" in table and f"workflows/{name}.jpg" in table


def test_sample_inputs_are_shipped_small_and_copied_without_overwriting(tmp_path):
    from streamvace.annotators.video_io import read_video_chunks
    from streamvace.nodes.sample_inputs import SAMPLE_FOLDER, install_sample_inputs

    shipped = sorted(os.listdir(SAMPLE_FOLDER))
    assert all(os.path.getsize(os.path.join(SAMPLE_FOLDER, n)) < 300_000 for n in shipped)
    frames = sum(chunk.shape[1] for chunk, _ in read_video_chunks(os.path.join(SAMPLE_FOLDER, "streamvace_sample.mp4")))
    assert frames == 49
    (tmp_path / "streamvace_reference.jpg").write_bytes(b"the user's own file")
    assert install_sample_inputs(str(tmp_path)) == [n for n in shipped if n != "streamvace_reference.jpg"]
    assert (tmp_path / "streamvace_reference.jpg").read_bytes() == b"the user's own file"
    assert install_sample_inputs(str(tmp_path)) == []
    assert install_sample_inputs(None) == []  # outside ComfyUI: no input folder, nothing happens
