"""One stream of chunks through a VAE, remembering its cache between calls (what the streaming nodes keep).

`DecodeStream` lets the decoder change between chunks (full Wan VAE <-> tiny VAE): both VAEs follow the
same frame-count rules, so the new decoder takes over with a mid-stream cache (4 frames per latent,
no first-frame handling) and the frame count of the stream stays 9 + 12k. It starts without the old
decoder's temporal context, so the first frames after a switch may show a small seam.
An encoder cannot change mid-stream: its latents would not continue the old encoder's.
"""

import torch


def same_weights(a, b) -> bool:
    """True for the same VAE, or two loads of the same file (loaders tag them with `streamvace_key`)."""
    key = getattr(a, "streamvace_key", None)
    return a is b or (key is not None and key == getattr(b, "streamvace_key", None))


class DecodeStream:
    """Latent chunks -> frames for one stream; a failed chunk changes nothing."""

    def __init__(self):
        self.vae = None
        self.cache = None
        self.chunks = 0
        self.next_frame = None  # the stream's latent frame expected next, when the latents say where they sit

    def decode(self, vae, latents: torch.Tensor, first_frame: int = None) -> torch.Tensor:
        """Decode the next chunk of normalised latents with `vae` (switching decoders if it changed).

        `first_frame`: the stream position of latents[:, :, 0] when known. 0 starts the stream over; a
        position other than the one expected (chunks skipped or repeated) continues with a fresh
        mid-stream decoder cache (a small seam) rather than decoding on top of the wrong history.
        """
        cache = self.cache
        restart = first_frame == 0 or (first_frame is not None and self.next_frame is not None
                                       and first_frame != self.next_frame)
        if first_frame == 0:
            self.chunks = 0
        if not same_weights(vae, self.vae) or cache is None or restart:
            cache = vae.new_decoder_cache(mid_stream=first_frame != 0 and (self.chunks > 0 or bool(first_frame)))
        video = vae.decode(latents, cache)
        self.vae, self.cache = vae, cache
        self.chunks += 1
        if first_frame is not None:
            self.next_frame = first_frame + latents.shape[2]
        return video


class EncodeStream:
    """Frame chunks -> latents for one stream; a failed chunk changes nothing."""

    def __init__(self):
        self.vae = None
        self.cache = None
        self.chunks = 0

    def encode(self, vae, video: torch.Tensor) -> torch.Tensor:
        """Encode the next chunk of frames [B,3,T,H,W] in [-1,1] to normalised latents."""
        if self.vae is not None and not same_weights(vae, self.vae):
            raise ValueError(
                "this encode stream was started with another VAE; an encoder cannot change mid-stream because its "
                "latents would not continue the old encoder's. Reset the stream (reset = true) to switch.")
        cache = self.cache if self.cache is not None else vae.new_encoder_cache()
        latents = vae.encode(video, cache)
        self.vae, self.cache = vae, cache
        self.chunks += 1
        return latents
