"""Decode chunk N while the DiT generates chunk N+1 (LongLive-2.0's async decode); frames come back in order.

On CUDA, `submit` enqueues a chunk's decode on a side stream that first waits for the producer stream's work
(the DiT that wrote the latents: an event, no host sync), copies the frames into pinned host memory
(non-blocking, on the side stream) and records a completion event. The host waits only when it asks for a
chunk (`take(wait=True)`, `drain`) or when `max_in_flight` chunks are still decoding. On the CPU the same calls
decode at once and give the same frames.

Memory across streams: a chunk keeps its latents and the decoder cache its decode reads until its completion
event has been waited on, so the caching allocator never gives memory the side stream still reads to the
producer stream. The latents must not be written after `submit` (StreamSession.generate returns a new tensor
on every call). A VAE's first chunk is decoded on the producer stream: its one-time set-up (channels-last
weights, autotuning) replaces tensors that stream owns.

DecodeStream's NaN check reads a value on the host, which would wait for the DiT, so it is deferred: a chunk
whose latents are not finite raises when it is settled (taken, or waited for to make room), and the decode
stream goes back to where it was before that chunk.
"""

import collections
import weakref
from dataclasses import dataclass

import torch

from .stream import DecodeStream


@dataclass
class _Chunk:
    number: int  # submission order, for error messages
    frames: torch.Tensor  # [B,3,T,H,W] on the CPU (pinned on CUDA), valid once `done` has completed
    finite: torch.Tensor  # 0-dim bool: the latents held no NaN / inf
    done: object  # torch.cuda.Event, or None when decoded synchronously
    before: tuple  # the decode stream's state before this chunk (restored if its latents were not finite)
    latents: torch.Tensor  # kept alive until `done`: the side stream reads them


class AsyncDecoder:
    """Latent chunks -> frames on the CPU, decoded on a side CUDA stream while the DiT runs; handed back in order."""

    def __init__(self, stream: DecodeStream = None, max_in_flight: int = 1):
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1 (chunks decoding at once), got {max_in_flight}")
        self.stream = DecodeStream() if stream is None else stream
        self.max_in_flight = max_in_flight
        self.submitted = 0
        self._chunks = collections.deque()
        self._settled = 0  # how many leading chunks are known to be decoded and finite
        self._side = None
        self._warm = weakref.WeakSet()  # VAEs that decoded a chunk here (their one-time set-up is done)

    @property
    def pending(self) -> int:
        """Chunks submitted and not yet taken."""
        return len(self._chunks)

    def submit(self, vae, latents: torch.Tensor, first_frame: int = None) -> None:
        """Enqueue the decode of the stream's next chunk of normalised latents [B,16,F,h,w] (see DecodeStream.decode).

        Returns at once unless `max_in_flight` chunks are still decoding (then it waits for the oldest). A chunk
        refused by the VAE's checks raises here and changes nothing.
        """
        while len(self._chunks) - self._settled >= self.max_in_flight:
            self._settle(wait=True)
        s = self.stream
        before = (s.vae, None if s.cache is None else s.cache.copy(), s.chunks, s.next_frame)
        if not latents.is_cuda:
            frames = s.decode(vae, latents, first_frame, check_inputs=False)
            frames = frames if frames.device.type == "cpu" else frames.cpu()
            self._chunks.append(_Chunk(self.submitted, frames, torch.isfinite(latents).all(), None, before, None))
        else:
            self._chunks.append(self._submit_cuda(vae, latents, first_frame, before))
        self._warm.add(vae)
        self.submitted += 1

    def _submit_cuda(self, vae, latents, first_frame, before) -> _Chunk:
        producer = torch.cuda.current_stream(latents.device)
        stream = producer
        if vae in self._warm:
            if self._side is None:
                self._side = torch.cuda.Stream(latents.device)
            stream = self._side
            stream.wait_stream(producer)  # the DiT's writes of these latents come first
        elif self._side is not None:  # a VAE new to this decoder, on the producer: earlier chunks' decodes come first
            producer.wait_stream(self._side)
        try:
            with torch.cuda.stream(stream):
                video = self.stream.decode(vae, latents, first_frame, check_inputs=False)
                frames = torch.empty(video.shape, dtype=video.dtype, device="cpu", pin_memory=True)
                frames.copy_(video, non_blocking=True)
                finite = torch.empty((), dtype=torch.bool, device="cpu", pin_memory=True)
                finite.copy_(torch.isfinite(latents).all(), non_blocking=True)
                done = torch.cuda.Event()
                done.record(stream)
        except BaseException:
            stream.synchronize()  # nothing it enqueued may outlive the tensors it reads
            raise
        return _Chunk(self.submitted, frames, finite, done, before, latents)

    def _settle(self, wait: bool) -> bool:
        """Mark the oldest unsettled chunk decoded (waiting for it if `wait`); False if it is still running."""
        chunk = self._chunks[self._settled]
        if chunk.done is not None:
            if not wait and not chunk.done.query():
                return False
            chunk.done.synchronize()
        if not bool(chunk.finite):
            self._roll_back(self._settled)
        chunk.done = chunk.before = chunk.latents = None  # the device memory it read may be reused now
        self._settled += 1
        return True

    def _roll_back(self, index: int) -> None:
        chunk = self._chunks[index]
        later = list(self._chunks)[index:]
        for item in later:  # their decodes read memory that is released below
            if item.done is not None:
                item.done.synchronize()
        s = self.stream
        s.vae, s.cache, s.chunks, s.next_frame = chunk.before
        for _ in later:
            self._chunks.pop()
        raise ValueError(
            f"chunk {chunk.number} given to the decoder holds NaN or infinite latents: the sampler or a node before "
            "the decoder produced them (they would decode to black frames). The decoder is back where it was before "
            f"that chunk and {len(later) - 1} chunk(s) submitted after it were dropped: submit them again.")

    def take(self, wait: bool = False) -> list:
        """The frames [B,3,T,H,W] (on the CPU) of the chunks decoded so far, oldest first, up to the first one still
        decoding; wait=True first waits for the oldest chunk."""
        if wait and self._chunks and not self._settled:
            self._settle(wait=True)
        while self._settled < len(self._chunks) and self._settle(wait=False):
            pass
        taken = [self._chunks.popleft().frames for _ in range(self._settled)]
        self._settled = 0
        return taken

    def drain(self) -> list:
        """The frames of every chunk not yet taken, oldest first (waits for them all)."""
        while self._settled < len(self._chunks):
            self._settle(wait=True)
        return self.take()

    def close(self) -> None:
        """Wait for the decodes in flight and forget the chunks not taken (nothing is freed under a running decode)."""
        for chunk in self._chunks:
            if chunk.done is not None:
                chunk.done.synchronize()
        self._chunks.clear()
        self._settled = 0

    def __enter__(self) -> "AsyncDecoder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
