"""Video VAEs (Wan2.1 causal VAE, tiny TAEHV-compatible VAE) with streaming caches, and the latent format."""
