"""Gen-SIS stage 2: an embedding-conditioned diffusion model and the self-augmentations it pre-generates.

    config.py        the `pathgen pretrain diffusion` schema (DiffusionConfig)
    conditioning.py  L2 normalisation, the learned projection and null token, SLERP
    model.py         the UNet2DConditionModel, the training DDPMScheduler, the Denoiser (UNet + projection)
    space.py         pixel space (optionally patched) or a frozen VAE's latents
    encoder.py       the frozen stage-1 encoder: sha256 and batched embeddings
    cache.py         embeddings (+ latents) of every training patch, computed once
    data.py          training pairs, the held-out split, dihedral flips
    train.py         the training loop: train_diffusion(cfg, resume) -> run folder
    pipeline.py      EmbeddingConditionedPipeline (a diffusers DiffusionPipeline), load_pipeline
    sample.py        samplers (dpm++, ddim, ddpm) and per-image seeded noise
    sources.py       the real patches generation starts from, checked against the model
    generate.py      generate(model, stores, out, ...) -> <out>/generated.zarr, grid.png, fidelity.json
    fidelity.py      fidelity(generated.zarr) -> dict: re-encoded views and interpolations against their embeddings
    pictures.py      rows of images as one PNG

Nothing is imported here so that `import pathgen.diffusion.<module>` stays cheap.
"""
