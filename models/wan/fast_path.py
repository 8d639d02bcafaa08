"""The fast chunk loop: fused block regions (torch.compile) and whole forwards replayed from CUDA graphs.

Two layers, each optional, each exact to the eager loop up to kernel round-off:

1. `compile_blocks(model)` compiles the two halves of every block around its self-attention (modulation,
   norms, RoPE, projections, gates, residuals, cross-attention, GELU-FFN). All blocks share one compiled
   artefact per half (parameters are graph inputs), so warm-up compiles two graphs, not sixty, and the
   attention call in between (a KV-cache write + one attention kernel) stays a plain call that Dynamo never
   traces: no guard ever sees a layer index or a slot offset, so nothing recompiles as the ring turns.
2. `ChunkGraphs` replays each forward of a steady-state chunk (the cache full, so every shape is fixed)
   from a CUDA graph: 30+ blocks x ~10 kernels launch as one graph. Inputs that change per chunk go
   through static buffers filled by device copies: the latent, the time embedding, the RoPE table, the
   cache-slot index of the chunk (one device tensor per ring phase, built once), the cache's own per-chunk
   tensors (`cache.prepare_replay`: the long-horizon policies' key rotations, masks and positions), the
   VACE contexts and strengths, and the prompt's K/V. A cache may name graph variants (`cache.replay_variant`: Deep
   Forcing's compressing first forward). Nothing in a replay syncs with the host (tests/host_sync.py).
"""

import dataclasses
import logging
import weakref

import torch

from . import triton_kernels
from .rope import RotaryTable

log = logging.getLogger(__name__)

_COMPILED = {}


def compile_blocks(model, mode: str = None, backend: str = "inductor") -> None:
    """Fuse the elementwise work of every base and VACE block with torch.compile (shared per block class)."""
    # parameters are graph inputs, so one artefact serves every block of a class; the limit only has to
    # cover the distinct shapes a process meets (sizes x chunk / reference token counts)
    if torch._dynamo.config.recompile_limit < 64:
        torch._dynamo.config.recompile_limit = 64
    if triton_kernels.available() and torch.cuda.is_available():
        triton_kernels.register_ops()  # compiled regions call the registered ops (see triton_kernels.register_ops)
    for block in list(model.blocks) + list(getattr(model, "vace_blocks", None) or []):
        key = (type(block), mode, backend)
        if key not in _COMPILED:
            options = dict(mode=mode, backend=backend, dynamic=False)
            _COMPILED[key] = (torch.compile(type(block).attention_inputs, **options),
                              torch.compile(type(block).attention_outputs, **options))
        block.regions = _COMPILED[key]
    if not getattr(model, "compiled", False):
        log.info("StreamVACE: DiT blocks will compile on their first chunk of each size (about a minute, once)")
    model.compiled = True


def uncompile_blocks(model) -> None:
    """Back to the eager blocks."""
    for block in list(model.blocks) + list(getattr(model, "vace_blocks", None) or []):
        block.__dict__.pop("regions", None)
    model.compiled = False


class ChunkGraphs:
    """CUDA graphs of one stream's steady-state forwards, keyed by (denoise or cache pass, VACE controls)."""

    def __init__(self, stream, capture: bool = True):
        s, cache = stream, stream.cache
        self.capture = capture  # False: the same static-buffer forwards, run eagerly (tests on the CPU)
        # a weak link back: the stream owns these graphs, and a cycle would keep its KV cache and graph memory
        # alive after the stream is dropped, until Python's cyclic collector happens to run
        self._stream = weakref.ref(s)
        self.weights = s.weight_addresses()  # the graphs are valid while the weights stay where they are
        self.x = torch.zeros(s.latent_shape, dtype=torch.float32, device=s.device)
        e, e0 = s._time[0]
        self.time = (torch.zeros_like(e), torch.zeros_like(e0))
        # the cache's kind of table (a relative-RoPE cache rotates only the queries; see long_horizon.py)
        table = cache.chunk_rope(s.model.config.head_dim, 0, s.grid, device=s.device)
        self.rope = type(table).from_tables(torch.zeros_like(table.cos), torch.zeros_like(table.sin))
        self.index = torch.zeros(s.config.chunk_frames * s.tokens_per_frame, dtype=torch.long, device=s.device)
        self.attends = cache.replay_attend_fns(self.index)
        self.text_kv = None
        self._prompt_version = None
        self._contexts = {}
        self._graphs = {}
        self._pool = torch.cuda.graph_pool_handle() if capture else None

    @property
    def stream(self):
        """The stream these graphs belong to."""
        stream = self._stream()
        if stream is None:
            raise RuntimeError("these CUDA graphs belong to a stream that was dropped; use the stream's own")
        return stream

    def prepare_chunk(self, slots, rope: RotaryTable) -> None:
        """Point the graphs at this chunk: its cache slots and RoPE table (device copies only)."""
        self.index.copy_(self.stream.cache.write_index(slots))
        self.stream.cache.prepare_replay(slots)
        self.rope.cos.copy_(rope.cos)
        self.rope.sin.copy_(rope.sin)
        if self._prompt_version != self.stream.prompt_version:
            self._load_prompt()

    def _load_prompt(self) -> None:
        base, vace = self.stream.text_kv
        if self.text_kv is None:  # first prompt: these buffers are what every graph reads
            self.text_kv = ([tuple(t.clone() for t in kv) for kv in base], [tuple(t.clone() for t in kv) for kv in vace])
        else:
            for static, new in zip(self.text_kv[0] + self.text_kv[1], base + vace):
                for a, b in zip(static, new):
                    a.copy_(b)
        self._prompt_version = self.stream.prompt_version

    def forward(self, x: torch.Tensor, step: int, vace, need_output: bool):
        """One forward of the current chunk, replayed from its graph (captured the first time)."""
        # the cache's variant: e.g. deep_forcing compresses on the first forward of some chunks only
        key = (need_output, len(vace), self.stream.cache.replay_variant(step))
        if len(vace) not in self._contexts:  # contexts and strengths: a new strength is a fill, not a new graph
            strength = torch.zeros((), dtype=torch.float32, device=self.x.device)
            self._contexts[len(vace)] = [(torch.zeros_like(item.context), strength.clone()) for item in vace]
        inputs = self._contexts[len(vace)]
        self.x.copy_(x)
        for static, value in zip(self.time, self.stream._time[step]):
            static.copy_(value)
        for (context, scale), item in zip(inputs, vace):
            context.copy_(item.context)
            scale.fill_(item.scale)
        if key not in self._graphs:
            self._graphs[key] = self._capture([dataclasses.replace(item, context=context, scale=scale)
                                               for item, (context, scale) in zip(vace, inputs)], need_output)
        graph, out = self._graphs[key]
        if graph is None:  # not captured (CPU tests): out holds the static VACE inputs to run with
            return self._run(out, need_output)
        graph.replay()
        return out

    def _run(self, vace, need_output):
        return self.stream._forward(self.x, None, self.attends, self.rope, vace, need_output=need_output,
                                    time=self.time, text_kv=self.text_kv)

    def _capture(self, vace, need_output):
        if not self.capture:  # no closure kept over self: the graphs hold no cycle (see __init__)
            return None, vace

        def run():
            return self._run(vace, need_output)
        log.info("StreamVACE: capturing the CUDA graph of a %s forward", "denoising" if need_output else "cache-pass")
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the capture: compilation, autotuning, cuBLAS workspaces
            for _ in range(2):
                run()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            out = run()
        return graph, out
