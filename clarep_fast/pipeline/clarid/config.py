"""The CLARep search's settings (``clarep-fast search``'s flags) and the DDIM step split at t_e."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from clarep_fast.pipeline.clarid.jacobian import MODES
from clarep_fast.pipeline.data.source import DataConfig
from clarep_fast.pipeline.options import check_ranges, option

ROUTES = ("generative", "inversion")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class SearchConfig:
    teacher: str = option(
        "default",
        "'default' (the embedded UNet), 'default-dit' (the embedded DiT), a diffusers model folder or a pipeline folder (model_index.json)",
    )
    route: str = option(
        "generative",
        "where x_{t_e} comes from: CFG sampling from noise, or DDIM inversion of real images",
        choices=ROUTES,
    )
    t_e: int = option(600, "time of the projection, in [1, T-2] of the teacher's schedule", flag="--t-e")
    k: int = option(
        96,
        "directions projected out (docs/runs/clarid/sweep.md: the background spread falls with k, digits stay)",
        flag="-k",
        low=1,
    )
    layer: str = option(
        "auto",
        "teacher feature whose Jacobian is searched (auto: a UNet's mid_block, a DiT's middle transformer block)",
    )
    pool: int = option(2, "that feature pooled to pool×pool", low=1)
    guidance: float = option(3.0, "CFG scale of every DDIM move", low=0)
    rescale: bool = option(True, "restore x_{t_e}'s norm after the projection")
    steps: int = option(30, "DDIM steps of a full T -> 0 trajectory, split at t_e", low=2)
    count: int | None = option(None, "CLAReps in all (default: --fraction of the training set)", low=1)
    fraction: float = option(0.1, "CLAReps per class as a share of its training images", low=0, high=1, low_open=True)
    feature_layers: tuple[str, ...] = option(
        ("auto",),
        "layers of the cached canonical features (auto: a UNet's two deepest down blocks and mid_block, "
        "a DiT's blocks at 1/4, 1/2 and 3/4 of its depth)",
    )
    feature_pool: int = option(2, "cached features pooled to feature_pool×feature_pool", low=1)
    feature_from: str = option(
        "sample",
        "cached features of the samples re-noised to --feature-time (sample), or of the projected latent at t_e (latent: the earlier form)",
        choices=("sample", "latent"),
    )
    feature_time: int = option(
        200,
        "t_f, the time the samples are re-noised to for their features (chosen on the validation split: docs/runs/clarid/feature_time.md)",
        low=0,
    )
    feature_label: str = option(
        "null",
        "label the feature taps see: null (content only) or true (the class label: features largely read the label)",
        choices=("null", "true"),
    )
    directions: str = option(
        "top",
        "directions projected out: the Jacobian's top-k (CLARID), or k random orthonormal ones (the control)",
        choices=("top", "random"),
    )
    mode: str = option(
        "auto",
        "top-k method (auto: exact or block Krylov, whichever needs fewer Jacobian products; jvp/vjp: subspace "
        "iteration, vjp for models without forward-mode derivatives)",
        choices=MODES,
    )
    oversample: int = option(20, "extra probe vectors of the subspace iteration", low=0)
    tol: float | None = option(
        None,
        "stop when successive top-k subspaces are this close (radians; default: 1e-2 for block Krylov, 3e-3 for "
        "subspace iteration, benchmarks/results/clarid/topk-down_blocks.1-p4-k96.md)",
        low=0,
        low_open=True,
    )
    max_iters: int = option(50, "subspace iterations at most", low=1)
    shard_size: int = option(40, "CLAReps per bank shard (the unit of resume and of torchrun's split)", low=1)
    jacobian_batch: int = option(20, "images per batched Jacobian call (halved on a GPU out-of-memory error)", low=1)
    dtype: str = option(
        "float32",
        "the teacher network's precision (bfloat16/float16: for GPUs; they move the canonical samples by more "
        "than half an 8-bit level on both embedded teachers, docs/clarid.md)",
        choices=tuple(DTYPES),
    )
    seed: int = option(0, "seed of the plan and of every shard's noise")
    class_map: str | None = option(
        None,
        "file mapping the data's class names to the teacher's (lines 'DATA_CLASS TEACHER_CLASS' as ImageNet's "
        "LOC_synset_mapping.txt, or JSON; default: by id2label name, or by count for a teacher without names)",
    )
    data: DataConfig = option(default_factory=DataConfig)

    def __post_init__(self):
        check_ranges(self)


def split_steps(config: SearchConfig, num_train_timesteps: int) -> tuple[int, int]:
    """DDIM steps before t_e (T -> t_e) and after it (t_e -> 0), proportional to the time covered."""
    before = max(1, round(config.steps * (num_train_timesteps - 1 - config.t_e) / num_train_timesteps))
    return before, max(1, config.steps - before)
