"""A small CLARep bank from a tiny random teacher, shared by the distillation tests."""

import dataclasses

import pytest

from clarep_fast.pipeline.clarid import SearchConfig, run_search
from tests.taps_models import tiny_unet


@pytest.fixture(scope="session")
def tiny_bank(tmp_path_factory):
    teacher = tmp_path_factory.mktemp("teacher")
    tiny_unet().save_pretrained(teacher, safe_serialization=True)
    config = SearchConfig(
        teacher=str(teacher),
        t_e=500,
        k=3,
        layer="down_blocks.1",
        steps=4,
        count=24,
        shard_size=12,
        oversample=4,
        tol=1e-2,
        max_iters=4,
        jacobian_batch=12,
        feature_layers=("down_blocks.1", "down_blocks.2", "mid_block"),
    )
    return run_search(config, tmp_path_factory.mktemp("bank") / "bank", progress=False), config


def small_distill(bank_dir, **changes):
    from clarep_fast.pipeline.distill.train import DistillConfig

    config = DistillConfig(
        bank=str(bank_dir),
        student="test_resnet",
        student_layers=(2, 3, 4),
        epochs=1,
        batch_size=256,
        bank_batch_size=8,
        learning_rate=0.05,
    )
    return dataclasses.replace(config, **changes)
