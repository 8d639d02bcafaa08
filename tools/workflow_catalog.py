"""What each bundled workflow is for: its title, what it does and how to use it. tools/ui_workflow.py writes this
into the UI workflow (the title into `extra.info` and a Markdown note node, with the model files and inputs the
graph itself names), tools/thumbnails.py draws the thumbnail from `picture`, and the README's workflow gallery is
made from the same entries (`python tools/ui_workflow.py --gallery`)."""

from dataclasses import dataclass, field

QUEUE_AGAIN = "Queue again to continue the same video (the stream keeps its KV cache); `reset` starts it over."


@dataclass(frozen=True)
class Workflow:
    """One bundled workflow: title, one-line summary, usage notes and the thumbnail recipe."""

    title: str
    does: str
    how: tuple = field(default_factory=tuple)
    picture: str = ""


WORKFLOWS = {
    "text_to_video": Workflow(
        "Text to video (LongLive)", "Generates an endless video from a prompt, 12 frames per queue run.",
        ("Each run adds one chunk: 9 frames first, then 12 (16 fps) to one growing MP4 in output/streamvace/.",
         QUEUE_AGAIN, "Edit the prompt between runs: the video switches to it from the next chunk."), "t2v"),
    "image_to_video": Workflow(
        "Image to video (first frame)", "Starts the video from an image and continues it from the prompt.",
        ("Replace the first frame with your image (any size: it is scaled and centre-cropped to 832x480).",
         "The image is kept as the video's first frame; the rest is generated.", QUEUE_AGAIN), "i2v"),
    "first_last_frame": Workflow(
        "First + last frame", "Generates the motion between two images.",
        ("Each run makes 3 chunks (33 frames at first) that start on the first image and end on the last.",
         "Queue again to continue: every run ends on the last image again.",
         "Works best when both images show the same scene."), "flf"),
    "stream_endless_infinity": Workflow(
        "Endless stream (LongLive-infinity cache)", "Generates one video that never ends, with the cache policy made "
        "for long streams: keys are rotated by their place in the window, so positions never grow.",
        ("Queue it again and again (or set the queue to repeat): every run appends 12 frames to one MP4.",
         "Pick the cache policy on the sampler: infinity (LongLive-infinity) or deep_forcing (deep sink + "
         "participative compression) keep long streams on course; longlive is the trained default.", QUEUE_AGAIN),
        "t2v"),
    "continue_clip": Workflow(
        "Continue a clip (extension via prefill)", "Continues an existing video: its last frames are encoded into "
        "the stream's cache and generation goes on from there.",
        ("Replace the clip with yours (at least 9 frames; its last 9 + 12k frames are used, scaled and centre-cropped "
         "to 832x480). The saved video holds only the new frames: join it after your clip.",
         "The clip is read when the stream starts (first run or `reset`); later runs just continue.", QUEUE_AGAIN),
        "extend"),
    "depth_control": Workflow(
        "Depth control (follow a video's motion)", "Restyles a video by its depth: shapes and motion follow the "
        "source, the look follows the prompt.",
        ("Replace the source video with yours. Each run cuts the frames of the sampler's next chunk, annotates "
         "their depth (streaming) and generates the chunk.", QUEUE_AGAIN), "depth"),
    "pose_control": Workflow(
        "Pose control", "People in the generated video move as the people in a source video.",
        ("Use a video with people: the bundled sample clip has none, so it gives empty pose frames.",
         "Each run detects people (RT-DETR), finds their keypoints (ViTPose) and draws them as VACE expects.",
         QUEUE_AGAIN), "pose"),
    "scribble_control": Workflow(
        "Scribble / line-art control", "Follows a video's outlines (XDoG line drawing, no weights).",
        ("The whole clip is annotated once (ComfyUI caches it) and control frame i steers video frame i "
         "(timing `stream`); after the clip ends the last frame holds.", QUEUE_AGAIN), "scribble"),
    "layout_trajectory": Workflow(
        "Layout / trajectory (boxes)", "Objects follow boxes moving along keyframes: no source video, no annotator "
        "weights.",
        ("Edit the layout JSON: each object is a list of keyframe boxes [x0, y0, x1, y1] spread over total_frames, "
         "or a trajectory of points (points-editor format); the prompt says what the objects are.",
         "Each run renders the boxes for its chunk.", QUEUE_AGAIN), "layout"),
    "inpaint_sam2": Workflow(
        "Inpaint an object tracked by SAM2", "Replaces one object of a video: SAM2 tracks it from a point, VACE "
        "regenerates inside its mask and keeps the rest.",
        ("Set the point (first-frame pixels) on the object to replace, or give a box; the mask grows a little to "
         "cover the edges.", "The prompt describes the whole scene with the new object.", QUEUE_AGAIN), "inpaint"),
    "outpaint": Workflow(
        "Outpaint (widen a video)", "Extends a video beyond its borders: the source is shrunk onto a wider canvas and "
        "VACE generates the new sides.",
        ("Choose the sides and expand_ratio on the Outpaint node; width and height match the sampler so the canvas "
         "fills the frame exactly.", "The whole clip is prepared once (timing `stream`: control frame i steers "
         "video frame i).", QUEUE_AGAIN), "outpaint"),
    "reference_depth": Workflow(
        "Reference image + depth (composition)", "Puts the subject of a reference image into a video whose layout "
        "follows a source's depth.",
        ("The reference is a subject on a white background; it steers the whole stream (encoded once).",
         "Replace the source video to change the motion.", QUEUE_AGAIN), "reference"),
    "prompt_schedule": Workflow(
        "Prompt switching mid-stream (schedule)", "Changes the prompt at given chunks of one continuous video "
        "(LongLive's prompt switch re-caches the recent frames).",
        ("One `chunk: prompt` per line; chunk 4 starts at frame 45 (9 + 3 x 12). Before the first entry the Prompt "
         "node holds.", "Queue 12 times (or set chunks) to see all three prompts.", QUEUE_AGAIN), "schedule"),
    "lora_text_to_video": Workflow(
        "LoRAs (chained)", "Text to video with a second LoRA chained after LongLive's.",
        ("Chain any number of LoRA nodes through `previous`; LoRAs are merged at load (PEFT or kohya naming).",
         "Try the strength between 0.5 and 1.", QUEUE_AGAIN), "lora"),
    "live_input": Workflow(
        "Live input (frames following the sampler)", "Re-imagines incoming frames chunk by chunk: low latency "
        "settings for a live source.",
        ("Frames for Next Chunks stands in for a live source: each run takes exactly the frames the next chunk "
         "needs (timing `call`: every run starts at the control's frame 0).",
         "Swap in any node that delivers the newest frames (a camera, a screen grab) and keep timing `call`.",
         "The motionstream cache (sink 1 chunk + window 1 chunk) and tiny-VAE decoding keep each chunk cheap.",
         QUEUE_AGAIN), "live"),
    "dreamlite_stylize": Workflow(
        "DreamLite stylize (video-rate)", "Restyles a whole video by an instruction with DreamLite-mobile and the "
        "Temporal-LLLite adapter (flicker-free).",
        ("1 step, batches of 8 frames, 512x512; the adapter conditions every frame on the previous output.",
         "DreamLite and the adapter are CC BY-NC 4.0 (non-commercial).", "Set compile to off on a CPU."),
        "dreamlite"),
    "annotate_depth": Workflow(
        "Annotate only (depth video)", "Turns a video into a depth video, nothing else: check an annotator, or "
        "make control videos for later.", ("Swap the Depth node for Pose, Scribble, Gray or Optical Flow.",), "annotate"),
    "vae_stream_roundtrip": Workflow(
        "VAE round trip (full and tiny)", "Encodes 9 frames with the Wan VAE and decodes them with both the full "
        "and the tiny VAE, to compare.", ("Both outputs are saved as animated WebP.",), "roundtrip"),
}
