"""The config schema of `pathgen pretrain ssl` (DINO) and `pathgen pretrain gensis` (Gen-DINO: the same schema with
a `gensis:` section); loaded with pathgen.config.load_config."""

from typing import Any, Literal

from pydantic import Field

from pathgen.config import RunConfig, Section


class DataConfig(Section):
    sources: list[str] = []  # patch stores, folders of stores, globs, tiling manifests or ImageFolder directories
    preset: Literal["natural", "histo"] = "natural"  # augmentation preset (see pathgen.data.augment)
    global_size: int = 224
    local_size: int = 96
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.4)
    n_local: int = 8
    batch_size: int = 64  # per process (per GPU)
    num_workers: int = 8
    # "workers": each DataLoader worker augments its images (CPU). "device": workers only decode, and the
    # multi-crop runs batched on the training device (pathgen.data.device_augment); for GPU servers whose CPU
    # cores cannot keep up. Images must then share one size: stores' patches do; other images are resized and
    # centre-cropped to device_input_size in the workers.
    augment_on: Literal["workers", "device"] = "workers"
    device_input_size: int = 256


class ModelConfig(Section):
    name: str = "vit_small_patch16_224"  # any timm ViT
    img_size: int | None = None  # positional-embedding grid size; defaults to data.global_size
    drop_path_rate: float = 0.1  # student only
    kwargs: dict[str, Any] = {}  # extra timm.create_model kwargs, e.g. {depth: 4, embed_dim: 192, patch_size: 8}
    out_dim: int = 65536
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    norm_last_layer: bool = True


class OptimConfig(Section):
    epochs: int = 100
    base_lr: float = 0.0005  # scaled by total batch size / 256
    min_lr: float = 1e-6
    warmup_epochs: int = 10
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    clip_grad: float = 3.0  # per-parameter gradient norm; 0 disables
    freeze_last_layer: int = 1  # epochs during which the head's last layer does not move


class DinoConfig(Section):
    warmup_teacher_temp: float = 0.04
    teacher_temp: float = 0.07
    warmup_teacher_temp_epochs: int = 30
    student_temp: float = 0.1
    momentum_teacher: float = 0.996  # cosine-increased to 1 over training
    center_momentum: float = 0.9
    koleo_weight: float = 0.0  # DINOv2's KoLeo regulariser on the student's global-crop features (DINOv2: 0.1)


class EvalConfig(Section):
    knn_train: list[str] = []  # labelled sources for the periodic kNN check; empty disables it
    knn_test: list[str] = []
    every_epochs: int = 1
    batch_size: int = 64


class GenSISConfig(Section):
    """Gen-DINO (Gen-SIS stage 3, arXiv 2412.01672): DINO plus generated views and the disentanglement task.

    With p_gen = 0 and lambda_dis = 0 nothing is generated or read, and training is plain DINO, step for step.
    """

    generated: str | None = None  # generated.zarr of `pathgen generate` (needed when p_gen > 0 or lambda_dis > 0)
    p_gen: float = Field(0.5, ge=0, le=1)  # P(the 2nd global crop of a patch is cut from one of its generated views)
    lambda_dis: float = Field(1.0, ge=0)  # L = L_DINO + lambda_dis * L_dis
    p_interp: float = Field(0.5, ge=0, le=1)  # fraction of batch items that also carry an interpolation
    # optional: the stage-1 encoder the views were generated from; its sha256 must be the one generated.zarr records
    encoder: str | None = None

    @property
    def uses_views(self) -> bool:
        return self.p_gen > 0

    @property
    def uses_interpolations(self) -> bool:
        return self.lambda_dis > 0 and self.p_interp > 0

    @property
    def active(self) -> bool:
        """Whether anything generated is used at all (otherwise the run is plain DINO)."""
        return self.uses_views or self.uses_interpolations


class SSLConfig(Section):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    dino: DinoConfig = DinoConfig()
    run: RunConfig = RunConfig()
    eval: EvalConfig = EvalConfig()
    gensis: GenSISConfig | None = None  # None: plain DINO (`pathgen pretrain ssl`)
