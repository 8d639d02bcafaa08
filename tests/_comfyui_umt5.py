"""A tiny umT5 for a real ComfyUI, and the comparison of ComfyUI's wan text encoder with the pack's. Runs inside
ComfyUI's python (cwd = a ComfyUI checkout; PYTHONPATH: tests/ and a folder holding `streamvace`).

ComfyUI cannot load a tiny umT5 as it stands: `comfy.sd.detect_te_model` recognises umT5/T5-XXL only by a 24th
block whose feed-forward input is 4096 wide, and `comfy.text_encoders.wan.UMT5XXlModel` builds its network from
the fixed `umt5_config_xxl.json` (5.7 B parameters, 11 GB in fp16 here), whatever the file holds. So
`patch_comfyui` changes two things, nothing else: detection answers T5_XXL for a file with a position bias in
every layer (umT5's mark), and that config file name is swapped for a tiny config of the same kind ("umt5",
gated tanh-GELU, per-layer position bias). Tokenizer (SentencePiece from the file's `spiece_model`, word by
word, `</s>` appended, padded to 512), attention mask, zeroing of the padded outputs, weight dtype and casting
stay ComfyUI's own code.

    python _comfyui_umt5.py build MODELS_DIR      text_encoders/umt5_tiny_fp16.safetensors (+ umt5-xxl/ tokenizer
                                                   folder beside it) and umt5_config_tiny.json under MODELS_DIR
    python _comfyui_umt5.py compare MODELS_DIR OUT_JSON   both encoders on PROMPTS, token ids and differences
"""

import io
import json
import os
import sys

from umt5_tiny import WORDS, tiny_umt5

PROMPTS = ["a red car on the beach at sunset", "A big  dog\nruns over the river in the city",
           " ".join(WORDS * 30)]  # the last one is longer than 512 tokens
WEIGHTS = os.path.join("text_encoders", "umt5_tiny_fp16.safetensors")
TOKENIZER = os.path.join("text_encoders", "umt5-xxl")  # where the pack's encoder looks by itself
CONFIG = "umt5_config_tiny.json"
UMT5_MARK = "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight"  # T5 has a bias in block 0 only


def patch_comfyui(config_path: str) -> None:
    """Let ComfyUI's CLIPLoader(type wan) load the tiny umT5: its size detection and config file, nothing else."""
    import comfy.sd
    import comfy.sd1_clip

    original_init, original_detect = comfy.sd1_clip.SDClipModel.__init__, comfy.sd.detect_te_model

    def init(self, *a, textmodel_json_config=None, **kw):
        if textmodel_json_config and os.path.basename(textmodel_json_config) == "umt5_config_xxl.json":
            textmodel_json_config = config_path
        original_init(self, *a, textmodel_json_config=textmodel_json_config, **kw)

    def detect(sd):
        return comfy.sd.TEModel.T5_XXL if UMT5_MARK in sd else original_detect(sd)

    comfy.sd1_clip.SDClipModel.__init__, comfy.sd.detect_te_model = init, detect


def build_files(models_dir: str, model) -> tuple:
    """A SentencePiece tokenizer (a folder and bytes) and the weights as Comfy-Org ships umT5: transformers'
    names, fp16, the tokenizer inside the file as `spiece_model`."""
    import sentencepiece
    import torch
    from safetensors.torch import save_file

    lines = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))] * 20
    proto = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=proto, vocab_size=60, model_type="unigram", pad_id=0, eos_id=1,
        unk_id=2, bos_id=-1, hard_vocab_limit=False, character_coverage=1.0, minloglevel=2)
    folder = os.path.join(models_dir, TOKENIZER)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "spiece.model"), "wb") as handle:
        handle.write(proto.getvalue())
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as handle:  # as google/umt5-xxl has it
        json.dump({"tokenizer_class": "T5Tokenizer", "extra_ids": 0, "pad_token": "<pad>", "eos_token": "</s>",
                   "unk_token": "<unk>", "model_max_length": 512}, handle)
    sd = {k: v.to(torch.float16).contiguous() for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"}
    sd["spiece_model"] = torch.frombuffer(bytearray(proto.getvalue()), dtype=torch.uint8)
    path = os.path.join(models_dir, WEIGHTS)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file(sd, path)
    return path, folder


def tiny_config(model, models_dir: str) -> str:
    """ComfyUI's umt5_config_xxl.json with the tiny model's sizes."""
    comfy_dir = os.path.join(os.getcwd(), "comfy", "text_encoders")
    with open(os.path.join(comfy_dir, "umt5_config_xxl.json")) as handle:
        config = json.load(handle)
    c = model.config
    config.update(d_ff=c.d_ff, d_kv=c.d_kv, d_model=c.d_model, num_heads=c.num_heads, num_layers=c.num_layers,
                  num_decoder_layers=c.num_layers, relative_attention_num_buckets=c.relative_attention_num_buckets,
                  vocab_size=c.vocab_size)
    path = os.path.join(models_dir, CONFIG)
    with open(path, "w") as handle:
        json.dump(config, handle)
    return path


def build(models_dir: str) -> None:
    """Write the tiny umT5 (weights with their tokenizer inside, a tokenizer folder) and its ComfyUI config."""
    model = tiny_umt5(seed=5)
    build_files(models_dir, model)
    tiny_config(model, models_dir)


def compare(models_dir: str, out: str) -> None:
    """Encode PROMPTS with ComfyUI's CLIPLoader(type wan) + CLIPTextEncode and with the pack's encoder, from the
    files `build` wrote; write token ids, shapes and differences as JSON."""
    sys.path.insert(0, os.getcwd())
    from comfy.cli_args import args

    args.cpu = True
    import torch

    import folder_paths
    import nodes

    patch_comfyui(os.path.join(models_dir, CONFIG))
    weights = os.path.join(models_dir, WEIGHTS)
    folder_paths.add_model_folder_path("text_encoders", os.path.dirname(weights), is_default=True)
    (clip,) = nodes.CLIPLoader().load_clip(os.path.basename(weights), type="wan", device="default")

    from streamvace.models.wan.text_encoder import load_text_encoder

    ours = load_text_encoder(weights, dtype=torch.float32)  # finds the tokenizer folder beside the weights
    results = []
    for prompt in PROMPTS:
        ((theirs, _),) = nodes.CLIPTextEncode().encode(clip, prompt)[0]
        theirs = theirs.float()
        comfy_ids = [t for t, _ in clip.tokenize(prompt)["umt5xxl"][0]]
        mine = ours.encode(prompt)
        n = min(theirs.shape[1], mine.shape[1])
        results.append({
            "prompt": prompt[:60], "comfy_shape": list(theirs.shape), "ours_shape": list(mine.shape),
            "comfy_ids": comfy_ids[:n], "ours_ids": ours.tokens(prompt)[0].tolist(),
            "comfy_real_tokens": int(sum(1 for t in comfy_ids if t != 0)),
            "max_abs_diff": float((theirs[:, :n] - mine[:, :n]).abs().max()),
            "max_abs": float(mine.abs().max()),
            "comfy_padding_abs_sum": float(theirs[:, len(comfy_ids) - comfy_ids.count(0):].abs().sum()),
        })
    with open(out, "w") as handle:
        json.dump({"comfy_dtype": str(clip.cond_stage_model.dtypes), "results": results}, handle)


def _check_tokenizer_packages() -> None:
    try:
        import google.protobuf  # noqa: F401  transformers reads a spiece.model tokenizer with it
        import sentencepiece  # noqa: F401
    except ImportError as error:
        sys.exit(f"{error}: install protobuf and sentencepiece into ComfyUI's python (pip install protobuf "
                 "sentencepiece) for the umT5 tests")


if __name__ == "__main__":
    _check_tokenizer_packages()
    if sys.argv[1:2] == ["build"]:
        build(sys.argv[2])
    else:
        compare(sys.argv[2], sys.argv[3])
