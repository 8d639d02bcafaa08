"""Causal Wan2.1 + VACE streaming: DiT, KV cache, chunk loop, sampler, VACE context, checkpoints."""
