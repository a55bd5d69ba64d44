"""The config schema of `pathgen pretrain diffusion` (Gen-SIS stage 2); loaded with pathgen.config.load_config."""

from typing import Literal

from pydantic import model_validator

from pathgen.config import RunConfig, Section


class DataConfig(Section):
    sources: list[str] = []  # patch stores, folders of stores, globs or tiling manifests (unlabelled patches)
    encoder: str = ""  # the frozen stage-1 encoder (a `pathgen pretrain ssl` export: encoder.safetensors or its folder)
    image_size: int = 64  # training image size in pixels; patches of another size are resized to it
    min_tissue: float = 0.0  # keep patches with at least this tissue fraction
    held_out: int = 8  # patches kept out of training: their embeddings condition the periodic sample grids
    flips: bool = True  # a random one of the 8 dihedral transforms of each target (histology has no up)
    batch_size: int = 32  # per process (per GPU)
    num_workers: int = 2
    encode_batch_size: int = 64  # batch of the one-off embedding (and latent) pass
    cache_dir: str | None = None  # where the embedding/latent cache lives; default <run.out_dir>/cache


class ModelConfig(Section):
    space: Literal["pixel", "latent"] = "pixel"
    # pixel space: each patch_size x patch_size block of pixels becomes channels of one UNet pixel (an invertible
    # pixel unshuffle, "simple diffusion"): ~patch_size^2 less compute, the diffusion still over every pixel
    patch_size: int = 1
    # latent space: a diffusers AutoencoderKL or VQModel, from_pretrained of a local folder or a hub id
    vae: str | None = None
    vae_type: Literal["kl", "vq"] = "kl"
    vae_subfolder: str | None = None  # e.g. "vae" inside a whole pipeline folder
    # how the embedding enters the UNet: one cross-attention token (Large-Image-Diffusion), or added to the
    # timestep embedding (RCDM; diffusers' class_embed_type="projection")
    conditioning: Literal["cross_attention", "timestep"] = "cross_attention"
    projection_dim: int = 256  # width of the learned linear projection of the L2-normalised embedding
    # the unconditional condition of classifier-free guidance: a zero vector, or a learned null token
    null_condition: Literal["zeros", "learned"] = "learned"
    cond_drop_prob: float = 0.1  # training: replace the condition by the null token with this probability
    # the diffusers UNet2DConditionModel, as data. Cross-attention blocks need conditioning: cross_attention.
    block_out_channels: list[int] = [128, 256, 256, 512]
    down_block_types: list[str] = ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]
    up_block_types: list[str] = ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]
    mid_block_type: str | None = "UNetMidBlock2DCrossAttn"
    layers_per_block: int = 2
    attention_head_dim: int = 32
    norm_num_groups: int = 32
    dropout: float = 0.0

    @model_validator(mode="after")
    def _check(self) -> "ModelConfig":
        if not (len(self.block_out_channels) == len(self.down_block_types) == len(self.up_block_types)):
            raise ValueError("block_out_channels, down_block_types and up_block_types must have the same length")
        if self.space == "latent" and not self.vae:
            raise ValueError("space: latent needs model.vae (a local folder or hub id of a diffusers VAE)")
        uses_cross = any("CrossAttn" in b for b in [*self.down_block_types, *self.up_block_types,
                                                      self.mid_block_type or ""])
        if self.conditioning == "cross_attention" and not uses_cross:
            raise ValueError("conditioning: cross_attention needs at least one CrossAttn block")
        if self.conditioning == "timestep" and uses_cross:
            raise ValueError("conditioning: timestep takes no CrossAttn blocks (use DownBlock2D/AttnDownBlock2D, "
                             "UNetMidBlock2D)")
        if self.space == "latent" and self.patch_size != 1:
            raise ValueError("patch_size is for pixel space; in latent space the VAE sets the grid")
        if not 0.0 <= self.cond_drop_prob < 1.0:
            raise ValueError("cond_drop_prob must be in [0, 1)")
        return self


class NoiseConfig(Section):
    """The DDPMScheduler of training (its config is saved with the model and seeds every sampler)."""

    num_train_timesteps: int = 1000
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "squaredcos_cap_v2"
    beta_start: float = 0.0001
    beta_end: float = 0.02
    # v: the UNet predicts sqrt(a) eps - sqrt(1 - a) x0. Its x0 estimate stays bounded at high noise, where eps's is
    # amplified by 1 / sqrt(a): a briefly trained eps model samples noise where a v model already gets colours right.
    # sample: the UNet predicts x0 itself.
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = "v_prediction"


class OptimConfig(Section):
    epochs: int = 100
    lr: float = 1e-4
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"  # after the warm-up
    warmup_steps: int = 500
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    clip_grad: float = 1.0  # global gradient norm; 0 disables
    ema_decay: float = 0.9999  # the EMA's ceiling; it warms up as (1 + step) / (10 + step), as diffusers' EMAModel
    ema_update_after_step: int = 0


class SampleConfig(Section):
    """The periodic sample grid of training (TensorBoard + <out>/samples/step_N.png), from the EMA weights."""

    every_steps: int = 1000  # 0 disables; a grid is always made at the end
    per_embedding: int = 4  # samples per held-out embedding (a row each)
    sampler: Literal["dpm++", "ddim", "ddpm"] = "dpm++"
    steps: int = 20
    guidance_scale: float = 2.5
    seed: int = 0


class DiffusionConfig(Section):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    noise: NoiseConfig = NoiseConfig()
    optim: OptimConfig = OptimConfig()
    sample: SampleConfig = SampleConfig()
    run: RunConfig = RunConfig(out_dir="runs/diffusion")
