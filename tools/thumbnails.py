"""Draw the template browser's thumbnail of every bundled workflow: workflows/<name>.jpg (ComfyUI's frontend asks
for exactly that file next to the workflow).

    python tools/thumbnails.py          # all of them
    python tools/thumbnails.py NAME     # one

Each picture shows what the workflow does with the pack's own inputs and weight-free annotators (scribble, gray,
layout, mask outlines, the pose renderer) on the sample clip of tools/sample_inputs.py, under a title band. Where
an annotator needs weights (depth) the picture draws the sample scene's known geometry instead, labelled as such.
PIL / OpenCV / the pack only: no model weights, no downloads.
"""

import json
import os
import sys

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
sys.path.insert(0, os.path.dirname(ROOT))

from sample_inputs import FRAMES, HEIGHT, SPEED, SQUARE, WIDTH, reference_image, sample_frames  # noqa: E402
from workflow_catalog import WORKFLOWS  # noqa: E402

SIZE = (640, 400)
BAND = 64
PANEL_W = 272
BACKGROUND, INK, ACCENT = (24, 26, 33), (236, 238, 242), (255, 153, 51)


def font(size: int):
    """Pillow's bundled scalable font (the same glyphs on every machine)."""
    return ImageFont.load_default(size=size)


def to_image(video: torch.Tensor, index: int) -> Image.Image:
    """Frame `index` of an annotator's [3, T, H, W] output in [-1, 1]."""
    array = ((video[:, index].permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5).round().byte().numpy()
    return Image.fromarray(array)


def clip_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 frames [T, H, W, 3] -> the annotators' [3, T, H, W] in [-1, 1]."""
    return torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1


def square_mask(index: int) -> np.ndarray:
    """Where the sample clip's moving square is in frame `index` (what SAM2 tracks from a point on it)."""
    mask = np.zeros((HEIGHT, WIDTH), np.float32)
    top, left = (HEIGHT - SQUARE) // 2, int(round(8 + SPEED * index)) % max(1, WIDTH - SQUARE)
    mask[top:top + SQUARE, left:left + SQUARE] = 1
    return mask


def scene_depth(index: int) -> Image.Image:
    """An illustration of the sample scene's depth (near = bright): floor gradient, disc, square in front."""
    ys = np.linspace(0.15, 0.55, HEIGHT, dtype=np.float32)[:, None].repeat(WIDTH, 1)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    ys[(xx - WIDTH * 0.75) ** 2 + (yy - HEIGHT * 0.7) ** 2 < (HEIGHT * 0.12) ** 2] = 0.7
    ys[square_mask(index) > 0] = 0.95
    return Image.fromarray((ys * 255).astype(np.uint8)).convert("RGB")


def pose_figure() -> Image.Image:
    """A dancer's skeleton drawn by the pack's OpenPose-18 renderer (VACE's colours) from hand-placed keypoints."""
    from streamvace.annotators.pose_render import render_pose_frame

    # OpenPose-18 order: nose, neck, r-shoulder, r-elbow, r-wrist, l-shoulder, l-elbow, l-wrist, r-hip, r-knee,
    # r-ankle, l-hip, l-knee, l-ankle, r-eye, l-eye, r-ear, l-ear
    people = []
    for cx, lean in ((300, -1), (560, 1)):
        points = [(0, -150), (0, -110), (-40, -105), (-85 * lean - 20, -150), (-60 * lean - 40, -200), (40, -105),
                  (75, -60), (95 + 20 * lean, -15), (-25, 0), (-45, 80), (-40 * lean - 30, 160), (25, 0), (40, 75),
                  (55, 155), (-10, -160), (10, -160), (-22, -155), (22, -155)]
        people.append([(cx + x, 250 + y) for x, y in points])
    body = np.array(people, np.float64)
    # drawn at a third of the frame size, so the limbs stay visible in a thumbnail
    small = render_pose_frame(HEIGHT // 3, WIDTH // 3, body / 3, np.ones(body.shape[:2]), resolution=0)
    return Image.fromarray(small)


def layout_frames() -> tuple:
    """Layout frames of the layout workflow's own JSON, first and last of the motion, drawn by LayoutAnnotator."""
    from streamvace.annotators.layout import LayoutAnnotator

    with open(os.path.join(ROOT, "workflows", "api", "layout_trajectory.json")) as handle:
        node = next(n for n in json.load(handle).values() if n["class_type"] == "StreamVACELayout")["inputs"]
    import cv2

    annotator = LayoutAnnotator(node["layout"], HEIGHT, WIDTH, node["total_frames"], node["box_size"], 6.0)
    boxes = annotator.boxes(node["total_frames"])
    video = annotator(node["total_frames"])
    overlay = np.minimum(np.asarray(to_image(video, 0)), np.asarray(to_image(video, node["total_frames"] - 1))).copy()
    for index, (_, color) in enumerate(annotator.objects):  # the way each object travels
        start, end = (((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for b in (boxes[0, index], boxes[-1, index]))
        cv2.arrowedLine(overlay, tuple(int(v) for v in start), tuple(int(v) for v in end),
                        tuple(int(c * 255) for c in color), 5, tipLength=0.08)
    return Image.fromarray(overlay), annotator


def text_card(text: str, size=(PANEL_W, 157), fill=(46, 50, 62)) -> Image.Image:
    """A prompt or instruction, wrapped onto a card."""
    card = Image.new("RGB", size, fill)
    draw, face = ImageDraw.Draw(card), font(17)
    lines = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split():
            if draw.textlength(f"{line} {word}".strip(), font=face) > size[0] - 24:
                lines.append(line)
                line = word
            else:
                line = f"{line} {word}".strip()
        lines.append(line)
    for row, line in enumerate(lines[:6]):
        draw.text((12, 10 + 22 * row), line, fill=INK, font=face)
    return card


def chunk_strip(first: Image.Image = None, last: Image.Image = None, chunks=(9, 12, 12, 12),
                labels=None) -> Image.Image:
    """The stream as chunks on a time line (9 frames, then 12 per queue run), optionally pinned to images."""
    strip = Image.new("RGB", (SIZE[0] - 48, 70), BACKGROUND)
    draw, face = ImageDraw.Draw(strip), font(15)
    width, x = strip.width - (70 if last else 0) - (70 if first else 0), 0
    if first:
        strip.paste(first.resize((64, 37)), (0, 16))
        x = 70
    scale = width / (sum(chunks) + 8)
    for index, frames in enumerate(chunks):
        w = int(frames * scale)
        draw.rounded_rectangle((x, 12, x + w - 6, 58), 6, fill=(58, 96, 160) if index % 2 else (70, 118, 190))
        label = labels[index] if labels else f"chunk {index + 1}: {frames} fr"
        draw.text((x + 8, 26), label, fill=INK, font=face)
        x += w
    draw.text((x + 2, 24), "...", fill=INK, font=font(20))
    if last:
        strip.paste(last.resize((64, 37)), (strip.width - 64, 16))
    return strip


def _panel_width(image: Image.Image) -> int:
    """Video frames shrink to a panel (square ones narrower); cards and small drawings keep their width."""
    if image.width < image.height or image.width == image.height > 300:
        return int(PANEL_W * 0.6)
    return PANEL_W if image.width > 480 else image.width


def compose(title: str, items: list, caption: str = "", strip: Image.Image = None) -> Image.Image:
    """Title band, then the items left to right (each (image, label)) joined by arrows, a caption and a strip."""
    canvas = Image.new("RGB", SIZE, BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((0, 0, SIZE[0], BAND), fill=(36, 40, 52))
    draw.rectangle((0, BAND - 4, SIZE[0], BAND), fill=ACCENT)
    draw.text((20, 14), title, fill=INK, font=font(26 if len(title) < 34 else 21))
    gap = 36
    widths = [_panel_width(image) for image, _ in items]
    scale = min(1.0, (SIZE[0] - 40 - gap * (len(items) - 1)) / sum(widths))
    x, top = (SIZE[0] - sum(int(w * scale) for w in widths) - gap * (len(items) - 1)) // 2, BAND + 22
    for index, ((image, label), w) in enumerate(zip(items, widths)):
        w = int(w * scale)
        h = int(w * image.height / image.width)
        canvas.paste(image.convert("RGB").resize((w, h), Image.LANCZOS), (x, top))
        draw.rectangle((x - 1, top - 1, x + w, top + h), outline=(90, 96, 110))
        if label:
            draw.text((x, top + h + 6), label, fill=(190, 196, 206), font=font(15))
        if index < len(items) - 1:
            mid = top + h // 2
            draw.polygon([(x + w + 10, mid - 8), (x + w + 26, mid), (x + w + 10, mid + 8)], fill=ACCENT)
        x += w + gap
    if caption:
        draw.text((20, SIZE[1] - (112 if strip else 34)), caption, fill=(200, 204, 214), font=font(16))
    if strip is not None:
        canvas.paste(strip, (24, SIZE[1] - strip.height - 14))
    return canvas


def picture(name: str) -> Image.Image:
    """The thumbnail of one catalogued workflow."""
    from streamvace.annotators.gray import GrayAnnotator
    from streamvace.annotators.mask_outline import draw_mask_contours
    from streamvace.annotators.scribble import ScribbleAnnotator

    info = WORKFLOWS[name]
    frames = sample_frames()
    clip = clip_tensor(frames)
    first, last, middle = (Image.fromarray(frames[i]) for i in (0, FRAMES - 1, FRAMES // 2))
    with open(os.path.join(ROOT, "workflows", "api", name + ".json")) as handle:
        prompts = [n["inputs"]["text"] for n in json.load(handle).values() if n["class_type"] == "CLIPTextEncode"]
    prompt = text_card(prompts[0]) if prompts else None
    kind = info.picture
    if kind == "t2v":
        return compose(info.title, [(prompt, "prompt")], "each queue run continues the same video", chunk_strip())
    if kind == "lora":
        return compose(info.title, [(prompt, "prompt"), (text_card("LongLive LoRA 1.0 + style LoRA 0.7",
                                                                   fill=(70, 52, 96)), "LoRAs merged at load")],
                       "chain any number of LoRA nodes", chunk_strip())
    if kind == "i2v":
        return compose(info.title, [(first, "first frame"), (prompt, "prompt")], "", chunk_strip(first=first))
    if kind == "flf":
        return compose(info.title, [(first, "first frame"), (last, "last frame")], "",
                       chunk_strip(first=first, last=last, chunks=(9, 12, 12)))
    if kind == "depth":
        return compose(info.title, [(middle, "source video"), (scene_depth(FRAMES // 2), "depth (illustration)")],
                       "depth of each run's frames steers the next chunk", chunk_strip())
    if kind == "annotate":
        return compose(info.title, [(middle, "video"), (scene_depth(FRAMES // 2), "depth video (illustration)")],
                       "annotators alone: depth, pose, scribble, gray, flow")
    if kind == "reference":
        return compose(info.title, [(Image.fromarray(reference_image(frames)), "reference"),
                                    (scene_depth(FRAMES // 2), "depth of the source (illustration)")],
                       "the reference subject, placed by the depth", chunk_strip())
    if kind == "pose":
        return compose(info.title, [(pose_figure(), "pose frames (OpenPose-18, VACE colours)"), (prompt, "prompt")],
                       "people found by RT-DETR, keypoints by ViTPose", chunk_strip())
    if kind == "scribble":
        lines = ScribbleAnnotator("xdog")(clip[:, FRAMES // 2:FRAMES // 2 + 1])
        return compose(info.title, [(middle, "source video"), (to_image(lines, 0), "XDoG lines (no weights)")],
                       "control frame i steers video frame i", chunk_strip())
    if kind == "layout":
        overlay, _ = layout_frames()
        return compose(info.title, [(overlay, "boxes at the start and end of their motion"), (prompt, "prompt")],
                       "no source video, no annotator weights", chunk_strip())
    if kind == "inpaint":
        mask = torch.from_numpy(square_mask(FRAMES // 2))[None, None]
        outline = np.asarray(to_image(draw_mask_contours(mask, color=(1.0, 0.25, 0.1), thickness=5).transpose(0, 1)
                                      * 2 - 1, 0))
        marked = np.where(outline.min(axis=2, keepdims=True) < 250, outline, frames[FRAMES // 2])
        masked = frames[FRAMES // 2].copy()
        masked[square_mask(FRAMES // 2) > 0] = 127
        return compose(info.title, [(Image.fromarray(marked), "tracked object (SAM2)"),
                                    (Image.fromarray(masked), "regenerated inside the mask")],
                       "the rest of each frame is kept", chunk_strip())
    if kind == "extend":
        return compose(info.title, [(first, "clip start"), (last, "clip end: the stream starts here")],
                       "the clip's last frames prefill the cache; new chunks follow",
                       chunk_strip(first=last, chunks=(12, 12, 12, 12)))
    if kind == "outpaint":
        from streamvace.annotators.outpaint import outpaint_canvas, outpaint_padding

        padding = outpaint_padding(HEIGHT, WIDTH, ["left", "right"], 0.3, 0)
        canvas, mask = outpaint_canvas(clip[:, FRAMES // 2:FRAMES // 2 + 1], padding, (HEIGHT, WIDTH))
        return compose(info.title, [(middle, "source video"), (to_image(canvas, 0), "canvas: new sides gray (mask)")],
                       "VACE fills the gray sides, frame by frame", chunk_strip())
    if kind == "schedule":
        schedule = "0: a red fox in a snowy birch forest\n4: ... at a frozen lake at sunset\n8: ... under the northern lights"
        return compose(info.title, [(text_card(schedule, (400, 120)), "prompt schedule (chunk: prompt)")],
                       "one continuous video; the prompt switches at chunks 4 and 8",
                       chunk_strip(chunks=(45, 48, 36), labels=("chunks 0-3: forest", "4-7: lake", "8-: night")))
    if kind == "live":
        gray = GrayAnnotator()(clip[:, [8, 20, 32]])
        return compose(info.title, [(to_image(gray, 0), "run 1"), (to_image(gray, 1), "run 2"),
                                    (to_image(gray, 2), "run 3")],
                       "each run: the newest frames -> gray control -> the next chunk", chunk_strip())
    if kind == "dreamlite":
        return compose(info.title, [(middle, "source video"), (text_card("an oil painting style", (180, 157)),
                                                               "instruction")],
                       "DreamLite-mobile + Temporal-LLLite: every frame, 1 step")
    if kind == "roundtrip":
        return compose(info.title, [(middle, "9 frames"), (text_card("Wan VAE encode -> decode with the Wan VAE "
                                                                     "and with the tiny VAE", (200, 157)), "")],
                       "compare full and tiny decoding")
    raise KeyError(f"{name}: no thumbnail recipe {kind!r} in tools/thumbnails.py")


def main(argv=None) -> int:
    """Write the thumbnails."""
    argv = sys.argv[1:] if argv is None else argv
    for name in argv or WORKFLOWS:
        path = os.path.join(ROOT, "workflows", name + ".jpg")
        picture(name).save(path, quality=85, optimize=True)
        print(f"{path}: {os.path.getsize(path) // 1024} KB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
