"""CLARep search end to end on a tiny teacher: the bank, resume, torchrun ranks, plan, errors."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clarep_fast.pipeline.clarid import SearchConfig, load_bank, run_search
from clarep_fast.pipeline.clarid.bank import shard_path
from clarep_fast.pipeline.clarid.setup import plan
from clarep_fast.pipeline.data.sources.default import default_splits
from tests.taps_models import tiny_unet

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher")
    tiny_unet().save_pretrained(path, safe_serialization=True)
    return path


def small_config(teacher_dir, **changes) -> SearchConfig:
    config = SearchConfig(
        teacher=str(teacher_dir),
        t_e=500,
        k=3,
        layer="down_blocks.1",
        steps=4,
        count=6,
        shard_size=2,
        feature_layers=("down_blocks.1", "mid_block"),
        oversample=4,
        tol=1e-2,
        max_iters=6,
        jacobian_batch=2,
    )
    return dataclasses.replace(config, **changes)


def _cli(args, env_extra=None, torchrun=0):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.update(env_extra or {})
    prefix = (
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={torchrun}",
            "-m",
            "clarep_fast.pipeline.cli",
        ]
        if torchrun
        else [sys.executable, "-m", "clarep_fast.pipeline.cli"]
    )
    result = subprocess.run(prefix + args, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def _cli_args(teacher_dir, bank):
    return ["search", str(bank), "--teacher", str(teacher_dir), "--t-e", "500", "-k", "3", "--layer", "down_blocks.1", "--steps", "4",
            "--count", "6", "--shard-size", "2", "--feature-layers", "down_blocks.1", "mid_block", "--oversample", "4", "--tol", "1e-2",
            "--max-iters", "6", "--jacobian-batch", "2"]  # fmt: skip


def test_search_writes_a_complete_bank(teacher_dir, tmp_path):
    bank_dir = run_search(small_config(teacher_dir), tmp_path / "bank", progress=False)
    bank = load_bank(bank_dir)
    assert bank.latents.shape == bank.start_latents.shape == bank.samples.shape == (6, 3, 16, 16)
    assert bank.index.tolist() == list(range(6)) and bank.singular_values.shape == (6, 3)
    assert (bank.singular_values[:, :-1] >= bank.singular_values[:, 1:]).all()
    assert bank.features["down_blocks.1"].shape == (6, 32 * 4) and bank.features["mid_block"].shape == (6, 32 * 4)
    assert bank.samples.abs().max() <= 1 and torch.isfinite(bank.latents).all()
    # the projection removed something and the rescale kept each latent's norm
    assert (bank.latents - bank.start_latents).flatten(1).norm(dim=1).min() > 0
    torch.testing.assert_close(
        bank.latents.flatten(1).norm(dim=1), bank.start_latents.flatten(1).norm(dim=1), rtol=1e-5, atol=0
    )
    for name in ("canonical.png", "nmi.png", "summary.json"):
        assert (bank_dir / name).stat().st_size > 0
    summary = json.loads((bank_dir / "summary.json").read_text())
    assert set(summary["nmi"]) == {"down_blocks.1", "mid_block", "all layers", "pixels (independent)"}
    assert 0 <= summary["nmi"]["mid_block"]["canonical"] <= 1
    assert (
        summary["nmi_features"] == "teacher features of the samples re-noised to t_f = 200 (null label: content only)"
    )
    config = json.loads((bank_dir / "config.json").read_text())
    assert (config["feature_from"], config["feature_time"], config["feature_label"], config["directions"]) == (
        "sample",
        200,
        "null",
        "top",
    )


def test_random_direction_control_projects_out_random_directions(teacher_dir, tmp_path):
    bank = load_bank(
        run_search(
            small_config(teacher_dir, count=2, shard_size=2, directions="random", rescale=False),
            tmp_path / "bank",
            progress=False,
        )
    )
    assert (bank.singular_values == 0).all() and (bank.iterations == 0).all()
    removed = (bank.start_latents - bank.latents).flatten(1)
    # an orthogonal projection
    assert torch.allclose(
        removed.norm(dim=1) ** 2 + bank.latents.flatten(1).norm(dim=1) ** 2,
        bank.start_latents.flatten(1).norm(dim=1) ** 2,
        rtol=1e-4,
    )
    assert 0 <= bank.samples.min() and bank.samples.max() <= 1


def test_resume_recomputes_only_missing_shards(teacher_dir, tmp_path):
    config = small_config(teacher_dir)
    bank_dir = run_search(config, tmp_path / "bank", progress=False)
    before = load_bank(bank_dir)
    kept = shard_path(bank_dir, 0).stat().st_mtime_ns
    shard_path(bank_dir, 1).unlink()  # as if killed before shard 1 was renamed into place ...
    shard_path(bank_dir, 1).with_name(".shard_00001.safetensors.999.tmp").write_bytes(b"half-written")  # ... mid-write
    with pytest.raises(FileNotFoundError, match="1 of 3 shards missing"):
        load_bank(bank_dir)
    run_search(config, bank_dir, progress=False)
    after = load_bank(bank_dir)
    assert shard_path(bank_dir, 0).stat().st_mtime_ns == kept
    for field in ("latents", "samples", "singular_values"):
        assert torch.equal(getattr(before, field), getattr(after, field)), field


def test_two_torchrun_ranks_give_the_same_bank_as_one_process(teacher_dir, tmp_path):
    _cli(_cli_args(teacher_dir, tmp_path / "one"))
    _cli(_cli_args(teacher_dir, tmp_path / "two"), torchrun=2)
    one, two = load_bank(tmp_path / "one"), load_bank(tmp_path / "two")
    for field in ("classes", "latents", "samples", "ordinary_samples", "singular_values"):
        torch.testing.assert_close(getattr(two, field), getattr(one, field), rtol=1e-5, atol=1e-5, msg=field)
    for layer in one.features:
        torch.testing.assert_close(two.features[layer], one.features[layer], rtol=1e-5, atol=1e-5)


def test_inversion_route_starts_from_real_images(teacher_dir, tmp_path):
    bank = load_bank(
        run_search(small_config(teacher_dir, route="inversion", count=4), tmp_path / "bank", progress=False)
    )
    assert bank.latents.shape == (4, 3, 16, 16) and torch.isfinite(bank.samples).all()


def test_plan_takes_ten_percent_of_each_class():
    labels = default_splits()["train"].labels
    classes, sources = plan(SearchConfig(), labels)
    assert len(classes) == 360 and (sources == -1).all()
    assert torch.equal(torch.bincount(classes), torch.bincount(labels) // 10)
    classes, sources = plan(SearchConfig(route="inversion", count=50), labels)
    assert len(classes) == 50 and torch.equal(labels[sources], classes) and len(sources.unique()) == 50


@pytest.mark.parametrize(
    "changes,match",
    [
        ({"k": 768}, r"k must be in \[1, 768\)"),
        ({"t_e": 999}, r"t_e must be inside the teacher.s schedule"),
        ({"t_e": 0}, r"t_e must be inside the teacher.s schedule"),
        ({"layer": "down_blocks.9"}, r"layer: unknown layer 'down_blocks.9'"),
        ({"feature_layers": ("mid", "mid_block")}, r"feature_layers: unknown layer 'mid'"),
        ({"route": "forward"}, "route must be one of"),
        ({"mode": "power"}, "mode must be one of"),
    ],
)
def test_bad_hyper_parameters_raise_clear_errors(teacher_dir, tmp_path, changes, match):
    with pytest.raises(ValueError, match=match):
        run_search(small_config(teacher_dir, **changes), tmp_path / "bank", progress=False)


def test_bank_made_with_another_config_or_teacher_is_refused(teacher_dir, tmp_path):
    bank = run_search(small_config(teacher_dir, count=2), tmp_path / "bank", progress=False)
    with pytest.raises(ValueError, match="differs in: k"):
        run_search(small_config(teacher_dir, count=2, k=4), bank, progress=False)
    other = tmp_path / "other_teacher"
    model = tiny_unet()
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    model.save_pretrained(other, safe_serialization=True)
    # another teacher: its fingerprint differs, not only its path
    with pytest.raises(ValueError, match=r"differs in: teacher_sha256\)"):
        run_search(small_config(other, count=2), bank, progress=False)
    moved = tmp_path / "moved_teacher"
    shutil.copytree(teacher_dir, moved)  # the same teacher at another path: the bank resumes with it
    assert run_search(small_config(moved, count=2), bank, progress=False) == bank


def test_teacher_with_another_class_count_is_refused(tmp_path):
    tiny_unet(num_classes=4).save_pretrained(tmp_path / "teacher4", safe_serialization=True)
    with pytest.raises(ValueError, match="knows 4 classes but the data has 10"):
        run_search(small_config(tmp_path / "teacher4"), tmp_path / "bank", progress=False)


def test_missing_bank_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a CLARep bank"):
        load_bank(tmp_path / "nowhere")


def test_out_of_memory_halves_the_jacobian_batch_and_keeps_the_result(teacher_dir, tmp_path, monkeypatch):
    """A Jacobian batch that does not fit is retried at half the size from the same random state."""
    import clarep_fast.pipeline.clarid.search as search

    reference = load_bank(
        run_search(
            small_config(teacher_dir, count=4, shard_size=4, jacobian_batch=4), tmp_path / "whole", progress=False
        )
    )
    real, sizes = search.topk_right_singular, []

    def tight_memory(fn, x, *args, **kwargs):
        sizes.append(len(x))
        if len(x) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(fn, x, *args, **kwargs)

    monkeypatch.setattr(search, "topk_right_singular", tight_memory)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    squeezed = load_bank(
        run_search(
            small_config(teacher_dir, count=4, shard_size=4, jacobian_batch=4), tmp_path / "squeezed", progress=False
        )
    )
    assert sizes == [4, 2, 1, 1, 1, 1]
    # per-image results do not depend on the batch (rows are independent); the probe draws differ, the subspaces agree to tol
    torch.testing.assert_close(squeezed.singular_values, reference.singular_values, rtol=2e-2, atol=1e-4)
    assert torch.isfinite(squeezed.latents).all()


def test_bfloat16_teacher_writes_a_finite_bank(teacher_dir, tmp_path):
    bank = load_bank(
        run_search(
            small_config(teacher_dir, count=2, shard_size=2, dtype="bfloat16"), tmp_path / "bank", progress=False
        )
    )
    assert (
        bank.latents.dtype == torch.float32
        and torch.isfinite(bank.latents).all()
        and torch.isfinite(bank.features["mid_block"]).all()
    )
    assert 0 <= bank.samples.min() and bank.samples.max() <= 1
    with pytest.raises(ValueError, match="dtype must be one of"):
        small_config(teacher_dir, dtype="float64")


def test_auto_layers_follow_the_teacher():
    from clarep_fast.pipeline.clarid.config import SearchConfig
    from clarep_fast.pipeline.clarid.setup import auto_layers, with_layers
    from clarep_fast.pipeline.teacher.model import Teacher
    from tests.taps_models import tiny_dit, tiny_unet

    assert auto_layers(tiny_unet()) == ("mid_block", ("down_blocks.1", "down_blocks.2", "mid_block"))
    dit = tiny_dit()
    blocks = len(dit.transformer_blocks)
    layer, features = auto_layers(dit)
    assert (
        layer == f"transformer_blocks.{blocks // 2}"
        and features[-1] == f"transformer_blocks.{min(blocks - 1, 3 * blocks // 4)}"
    )
    explicit = SearchConfig(layer="down_blocks.1", feature_layers=("mid_block",))
    assert with_layers(explicit, Teacher(tiny_unet())) == explicit
    resolved = with_layers(SearchConfig(), Teacher(tiny_unet()))
    assert resolved.layer == "mid_block" and resolved.feature_layers == ("down_blocks.1", "down_blocks.2", "mid_block")
    with pytest.raises(ValueError, match="'auto' stands alone"):
        with_layers(SearchConfig(feature_layers=("auto", "mid_block")), Teacher(tiny_unet()))


def test_auto_expects_the_krylov_steps_the_shard_s_last_batch_took(monkeypatch):
    """--mode auto: the first Jacobian batch of a shard predicts block Krylov's cost from
    KRYLOV_STEPS, each later one from the steps the batch before it took (exact, 0 steps, teaches
    nothing): the choice follows this teacher's convergence and depends on the shard alone."""
    import clarep_fast.pipeline.clarid.search as search
    from clarep_fast.pipeline.clarid.jacobian import KRYLOV_STEPS, TopK

    expected, taken = [], iter([9, 9, 0, 4])

    def recording(fn, x, k, **kwargs):
        expected.append(kwargs["expected_steps"])
        steps = next(taken)
        return TopK(torch.zeros(len(x), 12, k), torch.zeros(len(x), k), torch.full((len(x),), steps), 1, 1)

    monkeypatch.setattr(search, "topk_right_singular", recording)
    config = SearchConfig(k=2, jacobian_batch=2)
    start = torch.zeros(8, 3, 2, 2)
    search.search_directions(None, start, torch.zeros(8), torch.zeros(8), config, torch.Generator())
    assert expected == [KRYLOV_STEPS, 9, 9, 9]
