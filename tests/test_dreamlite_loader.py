"""Loading a DreamLite-mobile diffusers folder, and the errors a wrong or broken folder gets."""

import json
import os
import shutil

import pytest
import torch
from diffusers import AutoencoderTiny, DreamLiteUNetModel, FlowMatchEulerDiscreteScheduler
from dreamlite_tiny import build_tiny_dreamlite
from dreamlite_tiny import one_torch_thread  # noqa: F401 (an autouse fixture)
from transformers import Qwen3VLModel

from streamvace.models.checkpoint_io import CheckpointError
from streamvace.models.dreamlite.loader import check_dreamlite_folder, load_dreamlite


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_tiny_dreamlite(str(tmp_path_factory.mktemp("DreamLite-mobile")))


def test_loads_every_part_of_the_diffusers_folder(folder):
    models = load_dreamlite(folder, dtype=torch.bfloat16)
    assert isinstance(models.unet, DreamLiteUNetModel) and isinstance(models.vae, AutoencoderTiny)
    assert isinstance(models.scheduler, FlowMatchEulerDiscreteScheduler)
    assert isinstance(models.prompt_encoder.model, Qwen3VLModel)
    assert models.dtype == torch.bfloat16 and models.prompt_encoder.dtype == torch.bfloat16
    assert not models.unet.training and not any(p.requires_grad for p in models.unet.parameters())
    assert models.prompt_encoder.image_tokens == 64  # a 256x256 frame, 16 px patches, 2x2 merge


def _broken_copy(folder, tmp_path, edit):
    copy = str(tmp_path / "DreamLite-mobile")
    shutil.copytree(folder, copy)
    edit(copy)
    return copy


def _write_index(name):
    def edit(copy):
        with open(os.path.join(copy, "model_index.json"), "w") as handle:
            json.dump({"_class_name": name}, handle)
    return edit


@pytest.mark.parametrize("edit, message", [
    (lambda c: os.remove(os.path.join(c, "model_index.json")), "not a diffusers-format pipeline folder"),
    (_write_index("DreamLitePipeline"), "holds DreamLite-base"),
    (_write_index("StableDiffusionPipeline"), "not DreamLiteMobilePipeline"),
    (lambda c: shutil.rmtree(os.path.join(c, "text_encoder")), "the text_encoder is missing"),
    (lambda c: os.remove(os.path.join(c, "vae", "diffusion_pytorch_model.safetensors")), "no vae weights"),
    (lambda c: open(os.path.join(c, "unet", "diffusion_pytorch_model.safetensors"), "w").close(), "file is empty"),
    (lambda c: [shutil.rmtree(os.path.join(c, d)) for d in ("tokenizer", "processor")], "no tokenizer"),
    (lambda c: open(os.path.join(c, "unet", "diffusion_pytorch_model.safetensors"), "wb").write(b"garbage" * 9),
     "could not load the unet"),
])
def test_a_wrong_or_broken_folder_gets_a_clear_error(folder, tmp_path, edit, message):
    broken = _broken_copy(folder, tmp_path, edit)
    with pytest.raises(CheckpointError, match=message) as error:
        load_dreamlite(broken, dtype=torch.float32)
    assert "DreamLite" in str(error.value) or "Download" in str(error.value)


def test_a_missing_folder_says_where_to_get_the_model(tmp_path):
    with pytest.raises(CheckpointError, match="revision diffusers"):
        check_dreamlite_folder(str(tmp_path / "nope"))
