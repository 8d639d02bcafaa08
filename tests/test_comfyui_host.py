"""The pack inside a real ComfyUI: a headless server on the loopback with tiny random models in the real
file layouts, driven over HTTP and the WebSocket as the browser drives it.

Opt-in (CI has no ComfyUI; nothing is downloaded): point COMFYUI_PATH at a ComfyUI checkout and
COMFYUI_PYTHON at a python that has ComfyUI's requirements, this pack's (requirements.txt) and protobuf (read
by transformers for a SentencePiece tokenizer) installed:

    COMFYUI_PATH=/path/to/ComfyUI COMFYUI_PYTHON=/path/to/comfy-venv/bin/python python -m pytest tests -m comfyui

The stream tests take their text conditioning from ComfyUI's LotusConditioning node (a constant [1, 2, 1024]
embedding), so they need no text encoder. The bundled API workflows run as shipped except for their model files
(tiny stand-ins, STAND_INS), smaller frames and no torch.compile; their umT5 is a tiny umT5 loaded by ComfyUI's
own CLIPLoader(type wan) / CLIPTextEncode code, which a test-only custom node lets accept a tiny size
(tests/_comfyui_umt5.py says what it patches and why). The tests at the end pin problems this test once found
in the pack (validation, lost chunks, restarts), now fixed, and compare our umT5 encoder with ComfyUI's.

Last run: 2026-12-06, ComfyUI 0.8.0 (CPU, torch 2.14.1, transformers 5.25): 37 passed, 0 failed, 2.4 min on
2 idle cores (7 to 14 min when shared with other jobs). All 18 API workflows ran; 3 queued runs with a randomized seed gave
9, 12, 12 frames of one stream; one JPEG preview per chunk over the websocket during sampling; `streamvace
queue` drove 3 runs (9, 12, 12 frames) and reported a rejected workflow in one line, exit 2; our umT5 vs
ComfyUI's wan encoder on a tiny umT5 (fp16 weights, fp32 compute, padded to 512): max abs diff 5.7e-6
(tolerance 1e-4 x max |value|; values up to 4.2).
"""

import hashlib
import json
import os
import re
import sys
from pathlib import Path

import pytest
import torch

from streamvace.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

from _comfyui_server import ComfyUIServer, png_size
from _vae_helpers import save_weights, tiny_vae_state_dict, wan_vae_state_dict
from dreamlite_tiny import build_tiny_dreamlite
from tiny_annotator_models import save, tiny_depth_anything, tiny_rt_detr, tiny_sam2_video, tiny_vitpose
from umt5_tiny import TINY_DIM
from wan_tiny import tiny_model

COMFYUI_PATH = os.environ.get("COMFYUI_PATH", "")
if not COMFYUI_PATH:
    pytest.skip("needs a real ComfyUI: set COMFYUI_PATH=/path/to/ComfyUI and COMFYUI_PYTHON=its python (with "
                "ComfyUI's and this pack's requirements installed)", allow_module_level=True)
pytestmark = pytest.mark.comfyui

ROOT = Path(__file__).resolve().parents[1]
PACK = "StreamVACE"  # the folder name under custom_nodes/, as ComfyUI reports it
# The bundled workflows name the real model (and input) files; each runs here with a tiny stand-in of the same kind.
STAND_INS = {
    "longlive_base.pt": "longlive_tiny.pt",
    "longlive_lora.pt": "longlive_lora_tiny.pt",
    "Wan2_1-VACE_module_1_3B_bf16.safetensors": "vace_module_tiny.safetensors",
    "umt5_xxl_fp8_e4m3fn_scaled.safetensors": "umt5_tiny_fp16.safetensors",
    "wan_2.1_vae.safetensors": "wan_vae_tiny.safetensors",
    "Wan2.1_VAE.pth": "wan_vae_tiny.safetensors",
    "taew2_1.pth": "taew_tiny.pth",
    "taew2_1.safetensors": "taew_tiny.pth",
    "Depth-Anything-V2-Small-hf": "tiny-depth",
    "depth_anything_v2_vits.pth": "tiny-depth",
    "vitpose-base-simple": "tiny-vitpose",
    "rtdetr_r50vd_coco_o365": "tiny-rtdetr",
    "sam2.1_hiera_tiny.pt": "tiny-sam2",
    "Wan2.1-1.3b-lora-highresfix-v1_new.safetensors": "longlive_lora_tiny.pt",
    "DreamLite-mobile": "dreamlite-tiny",
    "temporal_lllite_step001440.safetensors": "none",  # the adapter is optional; the tiny U-Net has no published one
}
# The sample inputs (workflows/inputs/) are copied into the input folder by the pack itself when ComfyUI loads it.
# ... and run in seconds: frame sizes shrunk (to the node's minimum where that is larger), no torch.compile on CPU.
SMALL_SIZE = {"width": 96, "height": 64}
FAST_SETTINGS = {"compile": "off"}
H, W = 128, 192  # stream tests: large enough that a denoising step lasts long enough to be interrupted


def _tiny_wan(text_dim: int) -> dict:
    """The tiny Wan DiT (VACE blocks included) with a text projection for `text_dim`-wide prompt embeddings."""
    sd = tiny_model(vace=True).state_dict()
    dim = sd["text_embedding.0.weight"].shape[0]
    generator = torch.Generator().manual_seed(1)
    sd["text_embedding.0.weight"] = torch.randn(dim, text_dim, generator=generator) / text_dim ** 0.5
    return sd


def _peft_lora(sd: dict, rank: int = 4) -> dict:
    """A LongLive-style PEFT LoRA on the self-attention queries."""
    generator = torch.Generator().manual_seed(2)
    lora = {}
    for key, weight in sd.items():
        if key.endswith("self_attn.q.weight"):
            module = f"base_model.model.{key[:-len('.weight')]}"
            lora[f"{module}.lora_A.weight"] = torch.randn(rank, weight.shape[1], generator=generator) * 0.05
            lora[f"{module}.lora_B.weight"] = torch.randn(weight.shape[0], rank, generator=generator) * 0.05
    return {"generator_lora": lora}


def _random_clip_l() -> dict:
    """A CLIP-L text encoder in the real key layout (transformers' names, as ComfyUI reads them), random fp16."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection
    config = CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                            projection_dim=768)
    with torch.device("meta"):
        layout = CLIPTextModelWithProjection(config).state_dict()
    generator = torch.Generator().manual_seed(3)
    sd = {}
    for key, tensor in layout.items():
        if not tensor.dtype.is_floating_point:
            continue  # position ids: ComfyUI builds its own
        if "norm" in key and key.endswith("weight"):
            sd[key] = torch.ones(tensor.shape, dtype=torch.float16)
        elif tensor.ndim == 1:
            sd[key] = torch.zeros(tensor.shape, dtype=torch.float16)
        else:
            sd[key] = (torch.randn(tensor.shape, generator=generator) * 0.02).half()
    return sd


def _input_video(path: Path, frames: int = 16) -> None:
    """A small moving gradient as an h264 mp4, for LoadVideo."""
    import av
    with av.open(str(path), "w") as container:
        stream = container.add_stream("h264", rate=16)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        for i in range(frames):
            image = torch.zeros(64, 96, 3, dtype=torch.uint8)
            image[..., 0] = (torch.arange(96) * 2 + i * 8) % 256
            image[..., 1] = (torch.arange(64) * 3)[:, None]
            for packet in stream.encode(av.VideoFrame.from_ndarray(image.numpy(), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """ComfyUI's base directory: this pack under custom_nodes/, tiny models under models/, an input video."""
    base = tmp_path_factory.mktemp("comfyui-base")
    for folder in ("custom_nodes", "input", "output", "models/diffusion_models", "models/loras", "models/vae",
                   "models/vae_approx", "models/text_encoders"):
        (base / folder).mkdir(parents=True)
    (base / "custom_nodes" / PACK).symlink_to(ROOT, target_is_directory=True)
    models = base / "models"
    # the tiny umT5's width, in the LongLive training-checkpoint format, for the bundled workflows
    tumt5 = {k: v for k, v in _tiny_wan(TINY_DIM).items() if not k.startswith("vace_")}
    torch.save({"generator_ema": {f"model.{k}": v for k, v in tumt5.items()}},
               models / "diffusion_models" / "longlive_tiny.pt")
    torch.save(_peft_lora(tumt5), models / "loras" / "longlive_lora_tiny.pt")
    # LotusConditioning's width, in the Comfy-Org repackaged format + a VACE module file, for the stream tests
    t1024 = _tiny_wan(1024)
    save_weights({f"model.diffusion_model.{k}": v for k, v in t1024.items() if not k.startswith("vace_")},
                 models / "diffusion_models" / "wan_tiny_t1024.safetensors")
    save_weights({k: v for k, v in t1024.items() if k.startswith("vace_")},
                 models / "diffusion_models" / "vace_module_tiny.safetensors")
    save_weights(wan_vae_state_dict(seed=2), models / "vae" / "wan_vae_tiny.safetensors")
    save_weights(tiny_vae_state_dict(seed=3), models / "vae_approx" / "taew_tiny.pth")
    save_weights(_random_clip_l(), models / "text_encoders" / "clip_l_random.safetensors")
    save(tiny_depth_anything(), models / "depthanything" / "tiny-depth")
    save(tiny_vitpose(), models / "vitpose" / "tiny-vitpose")
    save(tiny_rt_detr(), models / "detection" / "tiny-rtdetr")
    save(tiny_sam2_video(), models / "sam2" / "tiny-sam2")
    build_tiny_dreamlite(str(models / "diffusers" / "dreamlite-tiny"))
    _input_video(base / "input" / "input.mp4")
    _tiny_umt5(base)
    return base


def _comfyui_python(*args: str, timeout: float = 300):
    """Run a script in ComfyUI's python from its checkout, with tests/ and this pack (as `streamvace`) importable."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "streamvace").symlink_to(ROOT, target_is_directory=True)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([folder, str(ROOT / "tests")]), "HF_HUB_OFFLINE": "1"}
        done = subprocess.run([os.environ.get("COMFYUI_PYTHON", sys.executable), *args], cwd=COMFYUI_PATH, env=env,
                              capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _tiny_umt5(base: Path) -> None:
    """A tiny umT5 in Comfy-Org's layout under models/text_encoders (SentencePiece inside, built with ComfyUI's
    python, which has sentencepiece), and a test-only custom node that lets ComfyUI's CLIPLoader(type wan) load
    it: ComfyUI's wan text encoder only recognises the full-size model (see tests/_comfyui_umt5.py)."""
    _comfyui_python(str(ROOT / "tests" / "_comfyui_umt5.py"), "build", str(base / "models"))
    (base / "custom_nodes" / "streamvace_test_tiny_umt5.py").write_text(
        '"""Test only (StreamVACE tests/test_comfyui_host.py): a tiny umT5 through CLIPLoader(type wan)."""\n'
        f"import sys\nsys.path.append({str(ROOT / 'tests')!r})\n"
        f"from _comfyui_umt5 import patch_comfyui\npatch_comfyui({str(base / 'models' / 'umt5_config_tiny.json')!r})\n"
        "NODE_CLASS_MAPPINGS = {}\n")


@pytest.fixture(scope="module")
def comfyui(base_dir):
    """The running server; stopped after the module."""
    if not (Path(COMFYUI_PATH) / "main.py").is_file():
        pytest.fail(f"COMFYUI_PATH={COMFYUI_PATH!r} is not a ComfyUI checkout (no main.py there)")
    server = ComfyUIServer(COMFYUI_PATH, os.environ.get("COMFYUI_PYTHON", sys.executable), str(base_dir))
    yield server
    server.stop()


def t2v_graph(stream_id: str, chunks: int = 1, reset: bool = False, control: bool = False) -> dict:
    """LotusConditioning -> StreamVACESampler -> StreamVACEVAEDecodeStream -> PreviewImage, on the tiny models;
    with `control`, the input video (LoadVideo -> GetVideoComponents -> ImageScale) steers it through VACE."""
    graph = {
        "1": {"class_type": "LotusConditioning", "inputs": {}},
        "2": {"class_type": "StreamVACEModelLoader", "inputs": {
            "model_name": "wan_tiny_t1024.safetensors", "vace_module": "none", "dtype": "fp32", "attention": "sdpa"}},
        "3": {"class_type": "StreamVACELoadWanVAE", "inputs": {"vae_name": "wan_vae_tiny.safetensors", "dtype": "fp32"}},
        "4": {"class_type": "StreamVACESampler", "inputs": {
            "model": ["2", 0], "positive": ["1", 0], "stream_id": stream_id, "reset": reset, "width": W, "height": H,
            "chunks": chunks, "seed": 7, "cache_policy": "longlive", "steps": "1000,750,500,250", "warp_steps": True}},
        "5": {"class_type": "StreamVACEVAEDecodeStream", "inputs": {
            "vae": ["3", 0], "samples": ["4", 0], "stream_id": stream_id, "reset": reset}},
        "6": {"class_type": "PreviewImage", "inputs": {"images": ["5", 0]}},
    }
    if control:
        graph.update({
            "7": {"class_type": "LoadVideo", "inputs": {"file": "input.mp4"}},
            "8": {"class_type": "GetVideoComponents", "inputs": {"video": ["7", 0]}},
            "9": {"class_type": "ImageScale", "inputs": {
                "image": ["8", 0], "upscale_method": "bilinear", "width": W, "height": H, "crop": "center"}},
            "10": {"class_type": "StreamVACEControl", "inputs": {"strength": 1.0, "timing": "stream",
                                                                 "control_video": ["9", 0]}},
        })
        graph["2"]["inputs"]["vace_module"] = "vace_module_tiny.safetensors"
        graph["4"]["inputs"].update(vae=["3", 0], control=["10", 0])
    return graph


def _status(entry: dict) -> str:
    finished = [kind for kind, _ in entry["status"]["messages"] if kind in ("execution_success", "execution_error",
                                                                             "execution_interrupted")]
    return finished[-1] if finished else entry["status"].get("status_str")


def _frames(comfyui, entry: dict) -> list:
    """(sha1, width, height) of each PNG that PreviewImage wrote in this run, in order: equal frames, equal files."""
    assert _status(entry) == "execution_success", f"{entry['status']}\n{comfyui.log_tail()}"
    pngs = [comfyui.view(image) for image in entry["outputs"]["6"]["images"]]
    return [(hashlib.sha1(png).hexdigest()[:12], *png_size(png)) for png in pngs]


def _interrupt_at(comfyui, step: int):
    """An on_message hook that POSTs /interrupt when the sampler (node 4) reports progress `step`."""
    def hook(kind, data, prompt_id):
        if kind == "progress" and data.get("node") == "4" and data.get("value") == step:
            comfyui.post_json("/interrupt", {"prompt_id": prompt_id})
    return hook


@pytest.fixture(scope="module")
def reference_stream(comfyui):
    """Three uninterrupted queue runs of one stream: the frames every other stream test must reproduce."""
    return [_frames(comfyui, comfyui.run(t2v_graph("reference"))) for _ in range(3)]


def test_pack_imports_without_errors(comfyui):
    log = comfyui.log()
    assert "Import times for custom nodes" in log, comfyui.log_tail()
    ours = [line for line in log.splitlines() if re.search(rf"custom_nodes[/\\]{PACK}\s*$", line)]
    assert ours and "IMPORT FAILED" not in ours[0], f"{ours}\n{comfyui.log_tail()}"
    assert "StreamVACE: could not load" not in log, log


def _check_inputs(name: str, declared: dict, served: dict) -> None:
    """The inputs ComfyUI serves for a node are the ones its INPUT_TYPES declares, options and all."""
    for section in ("required", "optional"):
        ours, theirs = declared.get(section, {}), served.get(section, {})
        assert set(ours) == set(theirs), f"{name} {section} inputs: {sorted(ours)} != {sorted(theirs)}"
        for input_name, (kind, *options) in ours.items():
            served_kind, *served_options = theirs[input_name]
            options, served_options = (options or [{}])[0], dict((served_options or [{}])[0])
            if isinstance(kind, list):  # a combo: the server lists (at least) our choices, in either combo form
                choices = served_options.pop("options", None) if served_kind == "COMBO" else served_kind
                assert set(kind) <= set(choices), f"{name}.{input_name}: {kind} not all in {choices}"
            else:
                assert served_kind == kind, f"{name}.{input_name}: {served_kind} != {kind}"
            assert served_options == options, f"{name}.{input_name}: {served_options} != {options}"


def test_object_info_lists_every_node_as_declared(comfyui, base_dir, monkeypatch):
    monkeypatch.setenv("STREAMVACE_MODELS_DIR", str(base_dir / "models"))  # our combos list the same tiny files
    info = comfyui.get_json("/object_info")
    for name, node in NODE_CLASS_MAPPINGS.items():
        served = info.get(name)
        assert served is not None, f"{name} is missing from /object_info"
        assert served["python_module"] == f"custom_nodes.{PACK}"
        assert served["display_name"] == NODE_DISPLAY_NAME_MAPPINGS.get(name, name)
        assert (served["category"], served["description"]) == (node.CATEGORY, getattr(node, "DESCRIPTION", ""))
        assert served["output"] == list(node.RETURN_TYPES)
        assert served["output_name"] == list(getattr(node, "RETURN_NAMES", node.RETURN_TYPES))
        _check_inputs(name, json.loads(json.dumps(node.INPUT_TYPES())), served["input"])


def test_workflow_templates_serve_our_workflows(comfyui):
    bundled = sorted((ROOT / "workflows").glob("*.json"))
    assert sorted(comfyui.get_json("/workflow_templates").get(PACK, [])) == sorted(p.stem for p in bundled)
    for path in bundled:
        assert comfyui.get_json(f"/api/workflow_templates/{PACK}/{path.name}") == json.loads(path.read_text())


def _runnable_copy(graph: dict, object_info: dict) -> dict:
    """The API graph with the real files swapped for the tiny stand-ins, small frames and no compilation."""
    graph = json.loads(json.dumps(graph))
    for node in graph.values():
        declared = object_info.get(node["class_type"], {}).get("input", {}).get("required", {})
        for key, value in node["inputs"].items():
            if isinstance(value, str) and value in STAND_INS:
                node["inputs"][key] = STAND_INS[value]
            elif key in SMALL_SIZE and isinstance(value, int):
                node["inputs"][key] = max(SMALL_SIZE[key], declared.get(key, [None, {}])[1].get("min", 0))
            elif key in FAST_SETTINGS and isinstance(value, str):
                node["inputs"][key] = FAST_SETTINGS[key]
    return graph


def _frame_count(path: Path) -> int:
    """Frames in a saved image, animation or video."""
    if path.suffix in (".webp", ".gif", ".png"):
        from PIL import Image
        with Image.open(path) as image:
            return getattr(image, "n_frames", 1)
    import av
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


@pytest.mark.parametrize("workflow", sorted((ROOT / "workflows" / "api").glob("*.json")), ids=lambda p: p.stem)
def test_bundled_api_workflow_validates_and_runs(comfyui, base_dir, workflow):
    graph = _runnable_copy(json.loads(workflow.read_text()), comfyui.get_json("/object_info"))
    entry = comfyui.run(graph, refused_hint="a model file that is not in STAND_INS needs a tiny stand-in there")
    assert _status(entry) == "execution_success", f"{entry['status']}\n{comfyui.log_tail()}"
    files = [image for output in entry["outputs"].values() for image in output.get("images", [])]
    assert files, f"{workflow.name} wrote no output"
    for image in files:
        path = base_dir / image["type"] / image["subfolder"] / image["filename"]
        assert _frame_count(path) >= 1, f"{path} holds no frame"


def test_queued_runs_continue_one_stream(reference_stream):
    assert [len(run) for run in reference_stream] == [9, 12, 12]
    assert {(width, height) for run in reference_stream for _, width, height in run} == {(W, H)}
    assert reference_stream[1] != reference_stream[2], "the stream did not move on"


def test_a_randomized_seed_continues_one_stream(comfyui, reference_stream):
    """The frontend's "control after generate: randomize" changes the seed after every run: the stream goes on
    (9, 12, 12 frames) with fresh noise from the next chunk, never starting over."""
    runs = [_frames(comfyui, comfyui.run(_with(t2v_graph("randomized"), "4", seed=seed)))
            for seed in (7, 1234567, 98765432101)]
    assert [len(run) for run in runs] == [9, 12, 12]
    assert runs[0] == reference_stream[0]  # the seed the reference stream used
    assert runs[1] != reference_stream[1] and runs[2] != reference_stream[2], "the new seeds changed nothing"


def _with(graph: dict, node: str, **inputs) -> dict:
    graph[node]["inputs"].update(inputs)
    return graph


def _preview_images(messages: list) -> list:
    """(event type, image format, (width, height)) of each binary preview message (ComfyUI's protocol.py:
    a 4-byte event type, for PREVIEW_IMAGE a 4-byte format, 1 = JPEG, then the image)."""
    import io
    import struct

    from PIL import Image

    found = []
    for payload in messages:
        event, image_format = struct.unpack(">II", payload[:8])
        with Image.open(io.BytesIO(payload[8:])) as image:
            found.append((event, image_format, image.format, image.size))
    return found


def test_previews_arrive_over_the_websocket_while_sampling(comfyui):
    """One preview per generated chunk, sent while the sampler runs (the first one before the second chunk's
    steps): from the latent-to-RGB map, or through a tiny VAE (preview_vae)."""
    def timeline_of(graph):
        timeline = []  # binary previews (bytes) and ("progress", node, value) in the order they arrived
        hook = lambda kind, data, _: timeline.append((kind, data.get("node"), data.get("value")))  # noqa: E731
        assert _status(comfyui.run(graph, previews=timeline, on_message=hook)) == "execution_success"
        step, steps_at_previews, shown = None, [], [item if isinstance(item, tuple) else "preview" for item in timeline]
        for item in timeline:  # the sampler's progress: 4 steps + 1 per chunk, the preview right after a chunk
            if isinstance(item, bytes):
                steps_at_previews.append(step)
            elif item[:2] == ("progress", "4"):
                step = item[2]
        assert steps_at_previews == [5, 10], shown
        assert shown.index("preview") < shown.index(("progress", "4", 6)) < shown.index(("executing", "5", None)), shown
        return [item for item in timeline if isinstance(item, bytes)]

    # ComfyUI scales every preview to fit --preview-size (512): the latent-size one too
    fitted = [(1, 1, "JPEG", (512, 512 * H // W))] * 2
    approximated = timeline_of(t2v_graph("previewed", chunks=2))
    assert _preview_images(approximated) == fitted
    graph = t2v_graph("previewed-taew", chunks=2)
    graph["11"] = {"class_type": "StreamVACELoadTinyVAE", "inputs": {"vae_name": "taew_tiny.pth", "dtype": "fp32"}}
    graph["4"]["inputs"]["preview_vae"] = ["11", 0]
    decoded = timeline_of(graph)
    assert _preview_images(decoded) == fitted
    assert decoded[0] != approximated[0] and decoded[1] != approximated[1], "the tiny VAE made no difference"


def test_interrupt_leaves_the_stream_intact(comfyui, reference_stream):
    assert _frames(comfyui, comfyui.run(t2v_graph("interrupted"))) == reference_stream[0]
    cancelled = comfyui.run(t2v_graph("interrupted"), on_message=_interrupt_at(comfyui, 1))
    assert _status(cancelled) == "execution_interrupted", cancelled["status"]
    assert _frames(comfyui, comfyui.run(t2v_graph("interrupted"))) == reference_stream[1]
    assert _frames(comfyui, comfyui.run(t2v_graph("interrupted"))) == reference_stream[2]


def test_vace_control_from_core_video_nodes(comfyui, reference_stream):
    runs = [_frames(comfyui, comfyui.run(t2v_graph("controlled", control=True))) for _ in range(3)]
    assert [len(run) for run in runs] == [9, 12, 12]
    assert runs[0] != reference_stream[0], "the control video changed nothing"


def test_reset_starts_the_stream_over(comfyui, reference_stream):
    assert _frames(comfyui, comfyui.run(t2v_graph("reference", reset=True))) == reference_stream[0]


# --- Problems this test once found, kept as regression tests ---

def test_sampler_inputs_are_range_checked_by_comfyui(comfyui):
    graph = t2v_graph("invalid")
    graph["4"]["inputs"].update(width=8, chunks=0, cache_policy="none-such")
    status, answer = comfyui.post_json("/prompt", {"prompt": graph})
    refused = [error["extra_info"]["input_name"] for error in answer.get("node_errors", {}).get("4", {}).get("errors", [])]
    assert status == 400 and sorted(refused) == ["cache_policy", "chunks", "width"], answer
    graph = t2v_graph("invalid")
    graph["4"]["inputs"]["steps"] = "250,500"
    status, answer = comfyui.post_json("/prompt", {"prompt": graph})
    assert [error["extra_info"]["input_name"] for error in answer["node_errors"]["4"]["errors"]] == ["steps"], answer


def test_a_failed_decode_loses_no_chunk(comfyui, reference_stream):
    """The chunk generated by a run whose decoder failed comes out, before the next one, in the next run."""
    assert _frames(comfyui, comfyui.run(t2v_graph("decode-fails"))) == reference_stream[0]
    broken = t2v_graph("decode-fails")
    broken["5"]["inputs"]["stream_id"] = ""  # the decoder refuses an empty stream id
    assert _status(comfyui.run(broken)) == "execution_error"
    assert _frames(comfyui, comfyui.run(t2v_graph("decode-fails"))) == reference_stream[1] + reference_stream[2]


def test_an_interrupted_multi_chunk_run_loses_no_chunk(comfyui, reference_stream):
    """Chunks an interrupted run finished come out, before the next one, in the next run."""
    assert _frames(comfyui, comfyui.run(t2v_graph("multi"))) == reference_stream[0]
    cancelled = comfyui.run(t2v_graph("multi", chunks=2), on_message=_interrupt_at(comfyui, 6))  # 2nd chunk, 1st step
    assert _status(cancelled) == "execution_interrupted", cancelled["status"]
    assert _frames(comfyui, comfyui.run(t2v_graph("multi"))) == reference_stream[1] + reference_stream[2]


def test_another_workflow_in_between_does_not_restart_the_stream(comfyui, reference_stream):
    assert _frames(comfyui, comfyui.run(t2v_graph("interleaved"))) == reference_stream[0]
    other = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
             "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
    assert _status(comfyui.run(other)) == "execution_success"
    assert _frames(comfyui, comfyui.run(t2v_graph("interleaved"))) == reference_stream[1]


def _wait_for_log(comfyui, text: str, timeout: float = 30) -> None:
    import time

    deadline = time.monotonic() + timeout
    while text not in comfyui.log():
        assert time.monotonic() < deadline, f"the server never logged {text!r}:\n{comfyui.log_tail()}"
        time.sleep(0.2)


def test_our_models_take_part_in_comfyuis_model_management(comfyui, reference_stream):
    assert "Requested to load ManagedModules" in comfyui.log(), comfyui.log_tail()


def test_free_between_runs_drops_the_stream_and_its_next_run_starts_over(comfyui, reference_stream):
    """Queue a stream, run another workflow that loads a model of its own, press Free (POST /free): our streams
    and models go; the stream's next run starts over from its first frame, says why, and streams on."""
    assert _frames(comfyui, comfyui.run(t2v_graph("freed"))) == reference_stream[0]
    assert _frames(comfyui, comfyui.run(t2v_graph("freed"))) == reference_stream[1]
    other = {"1": {"class_type": "CLIPLoader", "inputs": {"clip_name": "clip_l_random.safetensors",
                                                          "type": "stable_diffusion", "device": "default"}},
             "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 0], "text": "another workflow"}},
             "3": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["2", 0]}},
             "4": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
             "5": {"class_type": "PreviewImage", "inputs": {"images": ["4", 0]}}}
    assert _status(comfyui.run(other)) == "execution_success", comfyui.log_tail()
    status, _ = comfyui.post_json("/free", {"unload_models": True, "free_memory": True})
    assert status == 200
    _wait_for_log(comfyui, "dropped every stream")  # the prompt worker frees between prompts
    assert _frames(comfyui, comfyui.run(t2v_graph("freed"))) == reference_stream[0]
    assert "the wan stream 'freed' was dropped earlier (ComfyUI unloaded all models" in comfyui.log()
    assert _frames(comfyui, comfyui.run(t2v_graph("freed"))) == reference_stream[1]


def test_queue_command_drives_a_stream(comfyui, reference_stream, tmp_path, capsys):
    """`streamvace queue` posts the graph 3 times and follows the websocket: 9, 12, 12 frames of one stream."""
    from streamvace.cli import main

    path = tmp_path / "t2v_api.json"
    path.write_text(json.dumps(t2v_graph("queued")))
    assert main(["queue", str(path), "--runs", "3", "--url", comfyui.url, "--timeout", "300"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and all(": done, outputs: " in line for line in lines), lines
    assert [len(line.split(": done, outputs: ")[1].split(", ")) for line in lines] == [9, 12, 12]


def test_our_umt5_encoder_matches_comfyuis_wan_text_encoder(base_dir, tmp_path):
    """The same tiny umT5 file and prompt through ComfyUI's CLIPLoader(type wan) + CLIPTextEncode and through
    models/wan/text_encoder.py: the same [1, 512, dim] tensor, padding (zeros) included. ComfyUI only recognises
    a full-size umT5-XXL, so _comfyui_umt5.py patches its size detection and config (and nothing else)."""
    out = tmp_path / "umt5.json"
    _comfyui_python(str(ROOT / "tests" / "_comfyui_umt5.py"), "compare", str(base_dir / "models"), str(out))
    short, spaced, long = json.loads(out.read_text())["results"]
    for result in (short, spaced):
        assert result["comfy_shape"] == result["ours_shape"] == [1, 512, 64], result
        assert result["comfy_ids"][:len(result["ours_ids"])] == result["ours_ids"], result
        assert result["comfy_real_tokens"] == len(result["ours_ids"]) and result["comfy_padding_abs_sum"] == 0
        # fp16 weights (ComfyUI's CPU text-encoder dtype, exact in the file) computed in fp32 on both sides
        assert result["max_abs_diff"] < 1e-4 * max(1.0, result["max_abs"]), result
    # Over 512 tokens the two differ by design: Wan (and we) truncate to 512 with </s> last; ComfyUI encodes every
    # token (781 here) and the DiT keeps the first 512 of those, computed with the rest in view.
    assert long["comfy_shape"][1] > 512 and long["ours_shape"][1] == 512, long
    assert long["ours_ids"][:511] == long["comfy_ids"][:511] and long["ours_ids"][511] == 1, long


def test_queue_command_reports_a_rejected_workflow_in_one_line_and_exits_2(comfyui, tmp_path):
    """`python -m streamvace queue` itself (a subprocess): ComfyUI's node errors in one line, exit code 2."""
    import subprocess

    bad = t2v_graph("queued-bad")
    bad["4"]["inputs"]["width"] = 8  # below the sampler's minimum
    del bad["5"]["inputs"]["vae"]
    path = tmp_path / "bad_api.json"
    path.write_text(json.dumps(bad))

    def queue(*args):
        return subprocess.run([sys.executable, "-m", "streamvace", "queue", *args, "--url", comfyui.url],
                              capture_output=True, text=True, timeout=120, cwd=tmp_path)

    done = queue(str(path), "--runs", "2")
    errors = [line for line in done.stderr.splitlines() if "streamvace queue:" in line]
    assert done.returncode == 2 and done.stdout == "" and len(errors) == 1, done
    assert "ComfyUI rejected the workflow" in errors[0], errors
    assert "node 4 (StreamVACESampler)" in errors[0] and "width" in errors[0], errors
    assert "node 5 (StreamVACEVAEDecodeStream)" in errors[0] and "vae" in errors[0], errors
    assert "Traceback" not in done.stderr, done.stderr
    # a UI-format workflow is refused before anything is posted, saying what to queue instead
    done = queue(str(ROOT / "workflows" / "text_to_video.json"))
    assert done.returncode == 2 and "a UI-format workflow; queue its API-format twin" in done.stderr, done


def _pixels(comfyui, entry: dict, node: str = "6") -> torch.Tensor:
    """The frames a PreviewImage node showed in this run, [T, H, W, 3] uint8 as int16."""
    import io

    import numpy as np
    from PIL import Image

    assert _status(entry) == "execution_success", f"{entry['status']}\n{comfyui.log_tail()}"
    frames = [np.asarray(Image.open(io.BytesIO(comfyui.view(image))).convert("RGB"))
              for image in entry["outputs"][node]["images"]]
    return torch.from_numpy(np.stack(frames)).short()


def test_our_text_encoder_nodes_condition_the_sampler_as_cliptextencode_does(comfyui):
    """In the server: a stream conditioned by CLIPLoader(type wan) + CLIPTextEncode on the tiny umT5 and one
    conditioned by our Load Text Encoder + Text Encode on the same file give the same frames."""
    prompt = "a red car on the beach at sunset"

    def graph(stream_id, ours):
        g = t2v_graph(stream_id)
        g["2"]["inputs"]["model_name"] = "longlive_tiny.pt"  # the tiny umT5's width
        if ours:
            g["1"] = {"class_type": "StreamVACETextEncode", "inputs": {"text_encoder": ["12", 0], "text": prompt}}
            g["12"] = {"class_type": "StreamVACELoadTextEncoder", "inputs": {
                "text_encoder_name": "umt5_tiny_fp16.safetensors", "tokenizer": "auto", "dtype": "fp32"}}
        else:
            g["1"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["12", 0], "text": prompt}}
            g["12"] = {"class_type": "CLIPLoader", "inputs": {"clip_name": "umt5_tiny_fp16.safetensors",
                                                              "type": "wan", "device": "default"}}
        return g

    theirs = _pixels(comfyui, comfyui.run(graph("text-comfy", ours=False)))
    ours = _pixels(comfyui, comfyui.run(graph("text-ours", ours=True)))
    assert theirs.shape == ours.shape == (9, H, W, 3)
    assert (theirs - ours).abs().max() <= 1, (theirs - ours).abs().max()  # 8-bit rounding of equal videos
    other = graph("text-other", ours=True)
    other["1"]["inputs"]["text"] = "a blue dog in the forest at night"
    assert (_pixels(comfyui, comfyui.run(other)) - ours).abs().float().mean() > 1, "the prompt changed nothing"
