"""The config schema of `pathgen mil train`; loaded with pathgen.config.load_config (configs/mil/*.yaml)."""

from typing import Literal

from pathgen.config import RunConfig, Section

MODELS = ("abmil", "transmil", "meanpool")


class MILModelConfig(Section):
    name: Literal["abmil", "transmil", "meanpool"] = "abmil"
    hidden_dim: int = 256  # instance projection width (abmil, transmil); meanpool is linear on the raw features
    attn_dim: int = 128  # gated-attention width (abmil)
    n_heads: int = 4  # transmil
    dropout: float = 0.25


class MILTrainConfig(Section):
    epochs: int = 50
    lr: float = 2e-4
    weight_decay: float = 1e-4
    class_weighted: bool = True  # cross-entropy weighted by inverse class frequency of the training fold
    val_fraction: float = 0.15  # of the training fold's cases, for early stopping; 0 trains all epochs
    patience: int = 10  # epochs without a better validation loss before stopping
    min_epochs: int = 5
    max_instances: int | None = None  # train on a random subset of this many patches per bag (all at test time)
    num_workers: int = 2  # DataLoader workers reading bags from disk


class MILCVConfig(Section):
    folds: int = 5  # stratified, case-grouped K-fold; 1: a single held-out split of test_fraction
    seeds: int = 1  # training runs per fold, seeds run.seed + 0..seeds-1
    test_fraction: float = 0.2  # with folds: 1
    splits: str | None = None  # reuse a splits.csv (slide_id,fold,split) instead of making folds


class MILMetricsConfig(Section):
    bootstrap: int = 1000  # resamples (of cases) for the 95% CIs on the pooled out-of-fold predictions


class MILConfig(Section):
    model: MILModelConfig = MILModelConfig()
    train: MILTrainConfig = MILTrainConfig()
    cv: MILCVConfig = MILCVConfig()
    metrics: MILMetricsConfig = MILMetricsConfig()
    run: RunConfig = RunConfig(out_dir="runs/mil")  # max_steps caps optimiser steps per run (smoke tests)
