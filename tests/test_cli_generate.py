"""`streamvace generate` end to end on tiny model files in a ComfyUI-style models folder: every control kind,
the same frames as the engine driven by hand with the whole control video, constant memory over a long input,
and one-line errors (exit code 2) that name the missing files and where to get them."""

import os

import cv2
import pytest
import torch
from safetensors.torch import save_file

from streamvace.annotators.scribble import ScribbleAnnotator
from streamvace.annotators.video_io import VideoWriter, read_video_chunks, sample_clip
from streamvace.cli import main
from streamvace.cli.generate import GenerateOptions, generate
from streamvace.models.vae.async_decode import AsyncDecoder
from streamvace.models.vae.stream import DecodeStream
from streamvace.models.vae.wan_vae import load_wan_vae
from streamvace.models.wan.checkpoint import load_wan_model
from streamvace.models.wan.kv_cache import cache_policy
from streamvace.models.wan.stream import StreamConfig
from streamvace.models.wan.stream_session import Control, StreamSession, fit_video
from streamvace.models.wan.text_encoder import load_text_encoder
from _vae_helpers import save_weights, tiny_vae_state_dict, wan_vae_state_dict
from tiny_annotator_models import save, tiny_depth_anything, tiny_rt_detr, tiny_vitpose
from umt5_tiny import save_tokenizer, save_wan_pth, tiny_umt5
from wan_tiny import tiny_model

H, W = 16, 32
PROMPT = "a red car runs on the beach"


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    """Tiny files under the names and folders the real ones have, in their real formats."""
    root = tmp_path_factory.mktemp("models")
    for folder in ("diffusion_models", "loras", "vae", "vae_approx", "text_encoders"):
        os.makedirs(root / folder)
    sd = {k: v.clone() for k, v in tiny_model(vace=True, seed=1).state_dict().items()}
    base = {"model." + k: v for k, v in sd.items() if not k.startswith("vace_")}
    torch.save({"generator_ema": base}, root / "diffusion_models" / "longlive_base.pt")  # LongLive's layout
    save_file({k: v.to(torch.bfloat16) for k, v in sd.items() if k.startswith("vace_")},
              str(root / "diffusion_models" / "Wan2_1-VACE_module_1_3B_bf16.safetensors"))
    generator = torch.Generator().manual_seed(5)
    lora = {f"blocks.{n}.self_attn.q.lora_{part}.weight": torch.randn(shape, generator=generator) * 0.02
            for n in range(2) for part, shape in (("A", (4, 256)), ("B", (256, 4)))}
    torch.save(lora, root / "loras" / "longlive_lora.pt")
    save_weights(wan_vae_state_dict(seed=2), root / "vae" / "wan_2.1_vae.safetensors")
    save_weights(tiny_vae_state_dict(seed=3), root / "vae_approx" / "taew2_1.pth")
    save_wan_pth(tiny_umt5(seed=4), root / "text_encoders" / "models_t5_umt5-xxl-enc-bf16.pth")
    save_tokenizer(root / "text_encoders" / "umt5-xxl")
    save(tiny_depth_anything(), root / "depthanything" / "Depth-Anything-V2-Small-hf")
    save(tiny_vitpose(), root / "vitpose" / "vitpose-base-simple")
    save(tiny_rt_detr(), root / "detection" / "rtdetr_r50vd_coco_o365")
    return str(root)


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory):
    """A 40-frame moving-square clip at another size than the output (it is resized as it is read)."""
    path = str(tmp_path_factory.mktemp("clips") / "clip.mp4")
    with VideoWriter(path, fps=12.0) as writer:
        writer.write(sample_clip(frames=40, height=48, width=64))
    return path


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("images") / "ref.png")
    image = (sample_clip(frames=1, height=40, width=40)[:, 0].permute(1, 2, 0) + 1) * 127.5
    cv2.imwrite(path, image.round().byte().numpy()[:, :, ::-1])
    return path


def _run(models_dir, tmp_path, **kwargs):
    chunks = []
    options = GenerateOptions(**{"prompt": PROMPT, "out": str(tmp_path / "out.mp4"), "models_dir": models_dir,
                                 "width": W, "height": H, "device": "cpu", **kwargs})
    stats = generate(options, on_chunk=lambda video, info: chunks.append(video.clone()))
    return stats, torch.cat(chunks, dim=1)


@pytest.fixture(scope="module")
def text_to_video(models_dir, tmp_path_factory):
    """Two chunks without any control, decoded with the Wan VAE."""
    return _run(models_dir, tmp_path_factory.mktemp("t2v"), chunks=2, decoder="wan")


def _written_frames(path):
    return sum(chunk.shape[1] for chunk, _ in read_video_chunks(path, 12))


@pytest.mark.parametrize("kind", ["scribble", "gray", "flow", "layout", "mask", "outpaint", "depth", "pose"])
def test_every_control_kind_runs_end_to_end(models_dir, clip_path, tmp_path, kind):
    extra = {"outpaint": "left,right"} if kind == "outpaint" else {"control": kind}
    if kind == "mask":
        extra["mask_boxes"] = "[[8, 4, 20, 12]]"
    if kind != "layout":  # a layout is drawn from boxes / a trajectory, not from a video
        extra["input"] = clip_path  # resized as it is read
    stats, frames = _run(models_dir, tmp_path, chunks=1, **extra)
    assert stats["chunks"] == 1 and stats["frames"] == 9 and frames.shape == (3, 9, H, W)
    assert stats["fps"] == (16.0 if kind == "layout" else 12.0) and _written_frames(stats["out"]) == 9
    assert torch.isfinite(frames).all() and frames.std() > 0.01


def test_control_steers_and_equals_the_engine_with_the_whole_control_video(models_dir, clip_path, tmp_path,
                                                                            text_to_video):
    """The CLI's lazy, chunk-by-chunk control equals one Control holding the whole annotated video."""
    stats, frames = _run(models_dir, tmp_path, input=clip_path, control="scribble", chunks=2, decoder="wan")
    whole = torch.cat([chunk for chunk, _ in read_video_chunks(clip_path, 100)], dim=1)
    control = ScribbleAnnotator("xdog")(fit_video(whole, H, W))
    model = load_wan_model(os.path.join(models_dir, "diffusion_models", "longlive_base.pt"),
                           vace_path=os.path.join(models_dir, "diffusion_models", "Wan2_1-VACE_module_1_3B_bf16.safetensors"),
                           loras=[(os.path.join(models_dir, "loras", "longlive_lora.pt"), 1.0)], dtype=torch.float32)
    vae = load_wan_vae(os.path.join(models_dir, "vae", "wan_2.1_vae.safetensors"))
    text = load_text_encoder(os.path.join(models_dir, "text_encoders", "models_t5_umt5-xxl-enc-bf16.pth"),
                             dtype=torch.float32).encode(PROMPT)
    session = StreamSession(model, StreamConfig(height=H, width=W, policy=cache_policy("longlive")), vae)
    session.set_prompt(text)
    decode = DecodeStream()
    expected = torch.cat([decode.decode(vae, session.generate(1, [Control(frames=control)]))[0] for _ in range(2)],
                         dim=1)
    torch.testing.assert_close(frames, expected, rtol=1e-4, atol=1e-4)
    assert (frames - text_to_video[1]).abs().mean() > 0.01


def test_prompt_schedule_switches_with_the_kv_recache_at_its_chunk(models_dir, tmp_path, text_to_video, capsys):
    """--prompt-at switches at its chunk index as the engine's set_prompt does (re-cache included); the chunks
    before it are those of --prompt alone."""
    bird = "a blue bird flies over the sea"
    stats, frames = _run(models_dir, tmp_path, chunks=3, decoder="wan", prompt_schedule=f"2: {bird}")
    assert stats["chunks"] == 3 and frames.shape[1] == 33
    torch.testing.assert_close(frames[:, :21], text_to_video[1], rtol=0, atol=0)  # --prompt holds before chunk 2
    join = lambda name: os.path.join(models_dir, *name.split("/"))  # noqa: E731
    model = load_wan_model(join("diffusion_models/longlive_base.pt"),
                           loras=[(join("loras/longlive_lora.pt"), 1.0)], dtype=torch.float32)
    vae = load_wan_vae(join("vae/wan_2.1_vae.safetensors"))
    encoder = load_text_encoder(join("text_encoders/models_t5_umt5-xxl-enc-bf16.pth"), dtype=torch.float32)
    session = StreamSession(model, StreamConfig(height=H, width=W, policy=cache_policy("longlive")))
    session.set_prompt(encoder.encode(PROMPT))
    decode = DecodeStream()
    expected = [decode.decode(vae, session.generate(1))[0] for _ in range(2)]
    session.set_prompt(encoder.encode(bird))  # mid-stream: re-caches the window under the new prompt
    expected.append(decode.decode(vae, session.generate(1))[0])
    torch.testing.assert_close(frames, torch.cat(expected, dim=1), rtol=1e-4, atol=1e-4)
    _, at_zero = _run(models_dir, tmp_path, chunks=1, decoder="wan", prompt_schedule=f"0: {bird}")
    _, bird_only = _run(models_dir, tmp_path, chunks=1, decoder="wan", prompt=bird)
    torch.testing.assert_close(at_zero, bird_only, rtol=0, atol=0)  # an entry at chunk 0 starts the video

    out = str(tmp_path / "cli.mp4")
    schedule = tmp_path / "schedule.txt"
    schedule.write_text(f"# the node's format\n0: {bird}\n")
    base = ["generate", "--prompt", PROMPT, "--out", out, "--models-dir", models_dir, "--chunks", "2", "--width",
            str(W), "--height", str(H), "--device", "cpu", "--decoder", "wan"]
    assert main(base + ["--prompt-schedule", str(schedule), "--prompt-at", "1: a red car"]) == 0
    assert _written_frames(out) == 21
    for bad, message in ((["--prompt-at", "a dog"], "is not 'chunk: prompt'"),
                         (["--prompt-at", "2: a dog"], "only 2 chunks"),
                         (["--prompt-at", "1: a dog", "--prompt-at", "1: a cat"], "chunk 1 is given twice"),
                         (["--prompt-schedule", str(tmp_path / "missing.txt")], "missing.txt")):
        capsys.readouterr()
        assert main(base + bad) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


def test_text_to_video_references_and_first_last_frames(models_dir, image_path, tmp_path, text_to_video):
    stats, t2v = text_to_video
    assert stats["frames"] == 21 and stats["fps"] == 16.0 and stats["frames_read"] == 0
    assert t2v.shape == (3, 21, H, W) and t2v.std() > 0.01
    _, framed = _run(models_dir, tmp_path, chunks=2, references=(image_path,), first_frame=image_path,
                     last_frame=image_path, decoder="wan")
    assert framed.shape == t2v.shape and (framed - t2v).abs().mean() > 0.01


def test_chunks_still_decoding_are_written_later_in_order(models_dir, tmp_path, text_to_video, monkeypatch):
    """As on a GPU, where chunk N is still decoding beside chunk N+1's DiT when the loop asks for it: each chunk
    is written once it is done (the last when the decoder drains), in order, with the same frames."""
    settle = AsyncDecoder._settle
    monkeypatch.setattr(AsyncDecoder, "_settle", lambda self, wait: settle(self, wait) if wait else False)
    seen = []
    options = GenerateOptions(prompt=PROMPT, out=str(tmp_path / "late.mp4"), models_dir=models_dir, width=W, height=H,
                              device="cpu", chunks=2, decoder="wan")
    stats = generate(options, on_chunk=lambda video, info: seen.append((video.clone(), info["chunks"], info["frames"])))
    assert [(chunks, frames) for _, chunks, frames in seen] == [(1, 9), (2, 21)] and stats["frames"] == 21
    torch.testing.assert_close(torch.cat([video for video, _, _ in seen], dim=1), text_to_video[1], rtol=0, atol=0)
    assert _written_frames(stats["out"]) == 21


def test_constant_memory_over_a_long_input(models_dir, tmp_path, monkeypatch):
    """The input is read lazily: never more than one read chunk ahead of the chunk being generated."""
    path = str(tmp_path / "long.mp4")
    with VideoWriter(path, fps=24.0) as writer:
        for start in range(0, 120, 40):
            writer.write(sample_clip(frames=40, height=H, width=W, seed=start))
    seen = []
    options = GenerateOptions(prompt=PROMPT, out=str(tmp_path / "o.mp4"), models_dir=models_dir, width=W, height=H,
                              device="cpu", input=path, control="gray", chunks=2, read_chunk=8)
    stats = generate(options, on_chunk=lambda video, info: seen.append((info["frames"], info["frames_read"],
                                                                       info["max_frames_held"])))
    assert stats["frames"] == 21 and stats["frames_read"] <= 21 + 8, "the reader ran ahead of the stream"
    assert all(read - written <= 12 + 8 and held <= 12 + 8 for written, read, held in seen)

    reads = []

    def counting(*args, **kwargs):  # every read the generator makes
        for item in read_video_chunks(*args, **kwargs):
            reads.append(item[0].shape[1])
            yield item

    monkeypatch.setattr("streamvace.annotators.video_io.read_video_chunks", counting)
    short = str(tmp_path / "short.mp4")
    with VideoWriter(short, fps=24.0) as writer:
        writer.write(sample_clip(frames=28, height=H, width=W))
    whole = GenerateOptions(prompt=PROMPT, out=str(tmp_path / "all.mp4"), models_dir=models_dir, width=W, height=H,
                            device="cpu", input=short, control="gray")
    stats = generate(whole)
    # as long as the input: 9 + 12 * 2 frames cover its 28 (the last chunk holds the last frame)
    assert stats["chunks"] == 3 and stats["frames"] == 33 and stats["frames_read"] == 28 == sum(reads)
    assert max(reads) == 12 and stats["max_frames_held"] <= 24


def test_cli_exit_codes_and_missing_files(models_dir, tmp_path, capsys):
    out = str(tmp_path / "cli.mp4")
    assert main(["generate", "--prompt", PROMPT, "--out", out, "--models-dir", models_dir, "--chunks", "1",
                 "--width", str(W), "--height", str(H), "--device", "cpu"]) == 0
    assert _written_frames(out) == 9 and "9 frames (1 chunks)" in capsys.readouterr().out
    empty = str(tmp_path / "empty")
    assert main(["generate", "--prompt", PROMPT, "--out", out, "--models-dir", empty, "--chunks", "1"]) == 2
    err = capsys.readouterr().err
    for expected in ("longlive_base.pt", os.path.join(empty, "diffusion_models"), "Efficient-Large-Model/LongLive-1.3B",
                     "models_t5_umt5-xxl-enc-bf16.pth", "Wan-AI/Wan2.1-T2V-1.3B", "google/umt5-xxl",
                     os.path.join(empty, "vae", "wan_2.1_vae.safetensors"), "--download"):
        assert expected in err
    assert "Traceback" not in err and "VACE module" not in err  # no control: no VACE module needed
    for bad, message in ((["--chunks", "1", "--control", "depth"], "--input"), ([], "--chunks N"),
                         (["--input", "sample"], "--control"),
                         (["--chunks", "1", "--width", "50"], "multiples of 16"),
                         (["--chunks", "1", "--control", "mask", "--input", "sample"], "--mask"),
                         (["--chunks", "1", "--reference", "nope.png"], "no such file"),
                         (["--chunks", "1", "--policy", "endless"], "unknown cache policy"),
                         (["--chunks", "1", "--policy", "deep_forcing:sink=x"], "name=integer")):
        assert main(["generate", "--prompt", PROMPT, "--out", out, "--models-dir", models_dir] + bad) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert main(["generate", "--prompt", PROMPT, "--out", out, "--models-dir", models_dir, "--chunks", "2",
                 "--width", str(W), "--height", str(H), "--device", "cpu", "--policy", "infinity"]) == 0
    assert _written_frames(out) == 21
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--prompt", PROMPT, "--out", out, "--control", "bogus"])
    assert exit_info.value.code == 2


def test_download_fetches_the_missing_files_into_their_folders(models_dir, tmp_path, monkeypatch):
    """--download asks huggingface_hub for exactly the missing files and puts them where they are looked up."""
    import shutil

    import huggingface_hub

    target = str(tmp_path / "models")
    shutil.copytree(models_dir, target)
    os.remove(os.path.join(target, "vae", "wan_2.1_vae.safetensors"))
    shutil.rmtree(os.path.join(target, "text_encoders", "umt5-xxl"))
    asked = []

    def fake_download(repo_id, filename, local_dir=None, **kwargs):
        asked.append((repo_id, filename))
        path = os.path.join(local_dir, filename)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if filename.endswith("vae.safetensors"):
            shutil.copy(os.path.join(models_dir, "vae", "wan_2.1_vae.safetensors"), path)
        else:
            source = os.path.join(models_dir, "text_encoders", "umt5-xxl", filename)
            if os.path.exists(source):
                shutil.copy(source, path)
            else:  # files the tiny tokenizer does without
                with open(path, "w") as handle:
                    handle.write("{}" if filename.endswith(".json") else "")
        return path

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    args = ["generate", "--prompt", PROMPT, "--out", str(tmp_path / "d.mp4"), "--models-dir", target, "--chunks", "1",
            "--width", str(W), "--height", str(H), "--device", "cpu", "--decoder", "wan"]
    assert main(args) == 2 and not asked
    assert main(args + ["--download"]) == 0
    assert ("Comfy-Org/Wan_2.1_ComfyUI_repackaged", "split_files/vae/wan_2.1_vae.safetensors") in asked
    assert ("google/umt5-xxl", "tokenizer.json") in asked and len(asked) == 5
    assert os.path.isfile(os.path.join(target, "vae", "wan_2.1_vae.safetensors"))
