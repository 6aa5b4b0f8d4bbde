"""The diffusion teacher on tiny configurations: training, CFG, DDIM sampling/inversion, checkpoints."""

import dataclasses

import pytest
import torch

from clarep_fast.pipeline.data import DataConfig
from clarep_fast.pipeline.rundir import RunDir
from clarep_fast.pipeline.teacher.ddim import ddim_invert, ddim_sample, time_grid
from clarep_fast.pipeline.teacher.load import check_fits, load_teacher
from clarep_fast.pipeline.teacher.model import (
    TeacherConfig,
    build_teacher,
    guided_noise,
    noise_prediction,
    num_classes_of,
)
from clarep_fast.pipeline.teacher.train import TrainTeacherConfig, export_checkpoint, learning_rate_at, train_teacher
from clarep_fast.pipeline.runtime import Runtime
from tests.taps_models import tiny_dit

TINY = TeacherConfig(
    resolution=8, num_classes=10, channels=(8, 16), layers_per_block=1, attention_level=1, norm_groups=4
)
TINY_DIT = TeacherConfig(
    resolution=8, num_classes=10, arch="dit", patch_size=2, dit_layers=2, dit_heads=2, dit_head_dim=8
)
TINY_RUN = TrainTeacherConfig(
    steps=4, batch_size=8, checkpoint_every=2, sample_every=4, data=DataConfig(resolution=8), teacher=TINY
)


def _tiny(dtype=torch.float32):
    torch.manual_seed(0)
    return build_teacher(TINY).to(dtype).eval()


def test_training_steps_decrease_the_loss_on_a_fixed_batch():
    model = _tiny().train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    x0, t, c = torch.rand(8, 3, 8, 8) * 2 - 1, torch.randint(0, 1000, (8,)), torch.randint(0, 11, (8,))
    noise = torch.randn_like(x0)
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.mse_loss(model(x0 + noise, t, class_labels=c).sample, noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_cfg_scale_one_is_the_conditional_prediction_and_w_extrapolates():
    model = _tiny()
    x, t, c = torch.randn(3, 3, 8, 8), torch.tensor([10, 500, 900]), torch.tensor([0, 4, 9])
    with torch.no_grad():
        conditional = noise_prediction(model, x, t, c)
        unconditional = noise_prediction(model, x, t, torch.full_like(c, 10))
        assert torch.equal(guided_noise(model, x, t, c, 1.0), conditional)
        guided = guided_noise(model, x, t, c, 3.0)
    torch.testing.assert_close(guided, unconditional + 3.0 * (conditional - unconditional), rtol=1e-5, atol=1e-5)


def test_ddim_inversion_then_sampling_reconstructs_better_with_more_steps():
    """Inversion and sampling integrate the same ODE both ways with a first-order (DDIM) scheme, so
    the round-trip error is discretization error and shrinks about like 1/steps. Tolerance: < 5% of
    the unit image scale at 100 steps, and at least 10× smaller than at 5 steps (measured for this
    random network, whose ε varies much faster than a trained one's: 0.62, 0.14, 0.03)."""
    model = _tiny(torch.float64)
    images, labels = torch.rand(2, 3, 8, 8, dtype=torch.float64) * 2 - 1, torch.tensor([1, 7])
    errors = []
    for steps in (5, 25, 100):
        latent = ddim_invert(model, images, labels, end=400, steps=steps)
        back = ddim_sample(model, latent, labels, guidance=1.0, steps=steps, start=400, clip=False)  # the exact ODE
        errors.append((back - images).abs().max().item())
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.05 and errors[0] > 10 * errors[2]


@pytest.mark.parametrize("teacher", [TINY, TINY_DIT], ids=["unet", "dit"])
def test_checkpoint_kill_resume_continues_from_the_same_step(tmp_path, teacher):
    run = dataclasses.replace(TINY_RUN, teacher=teacher)
    uninterrupted = train_teacher(run, tmp_path / "whole", progress=False)
    train_teacher(dataclasses.replace(run, steps=2), tmp_path / "killed", progress=False)  # "killed" after step 2
    assert RunDir(tmp_path / "killed", command="train-teacher").load_checkpoint()["step"] == 2
    resumed = train_teacher(run, tmp_path / "killed", progress=False)
    whole, again = load_teacher(uninterrupted), load_teacher(resumed)
    for (name, a), (_, b) in zip(whole.state_dict().items(), again.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)
    log = (tmp_path / "killed" / "loss.csv").read_text().splitlines()
    assert log[0] == "step,loss" and [int(line.split(",")[0]) for line in log[1:]] == [1, 2, 3, 4]
    assert (tmp_path / "killed" / "samples_000004.png").exists()
    assert (tmp_path / "killed" / "teacher" / "diffusion_pytorch_model.safetensors").exists()
    # the quality gate's view of a run: the EMA teacher of its last checkpoint (step 4, the end)
    exported, step = export_checkpoint(tmp_path / "killed", tmp_path / "exported")
    assert step == 4
    for (name, a), (_, b) in zip(again.state_dict().items(), load_teacher(exported).state_dict().items()):
        assert torch.equal(a, b), name


def test_a_constant_rate_run_extended_by_a_cooldown_is_the_cooldown_run(tmp_path):
    """Steps 1-2 at the full rate, then a cooldown over steps 3-4 (rates lr, lr/2): the run trained
    at a constant rate to step 2 and extended with the cooldown is the run planned that way."""
    planned = dataclasses.replace(TINY_RUN, learning_rate=1e-3, cooldown_steps=2)
    rates = [learning_rate_at(1e-3, 4, 2, step) for step in range(4)]
    assert rates == [1e-3, 1e-3, 1e-3, 5e-4]
    whole = train_teacher(planned, tmp_path / "whole", progress=False)
    train_teacher(dataclasses.replace(planned, steps=2, cooldown_steps=0), tmp_path / "extended", progress=False)
    extended = train_teacher(planned, tmp_path / "extended", progress=False)
    state = RunDir(tmp_path / "extended", command="train-teacher").load_checkpoint()
    assert state["optimizer"]["param_groups"][0]["lr"] == 5e-4  # the last update's rate
    for (name, a), (_, b) in zip(load_teacher(whole).state_dict().items(), load_teacher(extended).state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)


def test_a_cooldown_that_would_change_trained_steps_is_refused(tmp_path):
    run = dataclasses.replace(TINY_RUN, learning_rate=1e-3)
    train_teacher(run, tmp_path / "run", progress=False)  # 4 steps at a constant rate
    before = (tmp_path / "run" / "config.json").read_text()
    with pytest.raises(ValueError, match="changes the learning rate of step 3"):
        train_teacher(dataclasses.replace(run, cooldown_steps=3), tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "config.json").read_text() == before  # refused before anything is written
    with pytest.raises(ValueError, match="--cooldown-steps 5 is more than --steps 4"):
        dataclasses.replace(run, cooldown_steps=5)


def test_export_checkpoint_refuses_what_is_not_a_training_run(tmp_path):
    with pytest.raises(ValueError, match="not a train-teacher run folder"):
        export_checkpoint(tmp_path, tmp_path / "out")
    train_teacher(dataclasses.replace(TINY_RUN, steps=1), tmp_path / "run", progress=False)
    (tmp_path / "run" / "checkpoint.pt").unlink()
    with pytest.raises(ValueError, match="has no checkpoint yet"):
        export_checkpoint(tmp_path / "run", tmp_path / "out")


def test_a_trained_dit_has_the_null_label_and_no_dropout_of_its_own():
    """--arch dit: K + 1 label rows (null K), and the labels it is given are the labels it uses in
    training mode too (the loop drops labels from its seeded generator, never the model)."""
    torch.manual_seed(0)
    model = build_teacher(TINY_DIT).train()
    assert type(model).__name__ == "DiTTransformer2DModel" and num_classes_of(model) == 10
    with torch.no_grad():  # away from adaLN-Zero's start, where every label gives the output 0
        for parameter in model.parameters():
            parameter.normal_(0, 0.3)
    x, t, c = torch.randn(16, 3, 8, 8), torch.randint(0, 1000, (16,)), torch.randint(0, 10, (16,))
    first, second = noise_prediction(model, x, t, c), noise_prediction(model, x, t, c)
    assert torch.equal(first, second) and first.shape == x.shape
    with pytest.raises(ValueError, match="--patch-size 3 must divide the resolution 8"):
        TeacherConfig(resolution=8, arch="dit", patch_size=3)


def test_a_new_dit_starts_as_adaln_zero_with_the_papers_initialization():
    """Peebles & Xie's start: every block's modulation (shift, scale, gate) and the final layer are
    zero, so the first output is exactly 0 and each block is the identity; the linear layers are
    Xavier-uniform (|w| <= sqrt(6 / (fan_in + fan_out))), not PyTorch's default."""
    torch.manual_seed(0)
    model = build_teacher(TINY_DIT)
    x, t, c = torch.randn(4, 3, 8, 8), torch.tensor([0, 300, 600, 999]), torch.tensor([0, 3, 9, 10])
    assert torch.equal(noise_prediction(model, x, t, c), torch.zeros_like(x))
    for block in model.transformer_blocks:
        assert not block.norm1.linear.weight.any() and not block.norm1.linear.bias.any()
    query = model.transformer_blocks[0].attn1.to_q.weight
    bound = (6 / sum(query.shape)) ** 0.5
    assert query.abs().max() <= bound and query.abs().max() > 0.9 * bound
    assert query.std() > 0.8 * bound / 3**0.5  # uniform on [-bound, bound]: std bound / sqrt(3)


def test_changed_config_in_an_existing_run_is_refused(tmp_path):
    train_teacher(dataclasses.replace(TINY_RUN, steps=1), tmp_path, progress=False)
    with pytest.raises(ValueError, match="different config"):
        train_teacher(dataclasses.replace(TINY_RUN, learning_rate=1.0), tmp_path, progress=False)


def test_load_teacher_checks_the_model_against_the_data(tmp_path):
    _tiny().save_pretrained(tmp_path / "unet")
    teacher = load_teacher(tmp_path / "unet")
    assert teacher.num_classes == 10 and teacher.resolution == 8
    check_fits(teacher, classes=10, resolution=8)
    with pytest.raises(ValueError, match="knows 10 classes but the data has 100"):
        check_fits(teacher, classes=100)
    with pytest.raises(ValueError, match="works at 8×8, the data is 32×32"):
        check_fits(teacher, resolution=32)
    with pytest.raises(FileNotFoundError, match="neither a diffusers model folder"):
        load_teacher(tmp_path / "nothing")
    tiny_dit().save_pretrained(tmp_path / "dit")
    with pytest.raises(ValueError, match="pixel teacher must take RGB images .* 4; a latent teacher needs its vae/"):
        load_teacher(tmp_path / "dit")  # a 4-channel DiT without a VAE
    eps = noise_prediction(tiny_dit(), torch.randn(2, 4, 8, 8), torch.tensor([3, 4]), torch.tensor([1, 10]))
    assert eps.shape == (2, 4, 8, 8)


def test_bad_time_arguments():
    with pytest.raises(ValueError, match="end must be in"):
        time_grid(999, 1000, 10)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        time_grid(999, -1, 0)
    with pytest.raises(ValueError, match="end .* must be below start"):
        ddim_sample(_tiny(), torch.randn(1, 3, 8, 8), torch.tensor([0]), start=100, end=200)


@pytest.mark.parametrize("classes", [1, 10, 1000])
def test_dit_null_label_is_diffusers_own(classes):
    """DiT with num_embeds_ada_norm = K knows K classes; diffusers' label dropout maps a dropped label to K
    (the extra row of its embedding table), which must be the null label CFG uses here."""
    from diffusers import DiTTransformer2DModel

    dit = DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        num_layers=1,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=classes,
        norm_num_groups=8,
    )
    embedding = dit.transformer_blocks[0].norm1.emb.class_embedder
    dropped = embedding.token_drop(torch.tensor([0, classes - 1]), force_drop_ids=torch.ones(2))
    assert num_classes_of(dit) == classes and dropped.tolist() == [classes, classes]
    assert embedding.embedding_table.num_embeddings == classes + 1
    seen = []
    dit.transformer_blocks[0].norm1.emb.class_embedder.register_forward_hook(
        lambda module, args, out: seen.append(args[0].clone())
    )
    guided_noise(dit, torch.randn(2, 4, 8, 8), torch.tensor([5, 5]), torch.tensor([0, classes - 1]), guidance=2.0)
    assert seen[0].tolist() == [0, classes - 1, classes, classes]  # conditional labels, then the null label K for both


def test_a_dit_without_a_null_label_has_its_classes_and_no_null():
    """A DiT trained without class dropout has no CFG row: its 10 classes are read and the null label
    is None (guidance != 1 is then refused by name: test_hub_layouts.py)."""
    from diffusers.models.embeddings import LabelEmbedding

    from clarep_fast.pipeline.teacher.model import label_table

    dit = tiny_dit()
    dit.transformer_blocks[0].norm1.emb.class_embedder = LabelEmbedding(10, 16, dropout_prob=0.0)  # no CFG row
    for block in dit.transformer_blocks:
        block.norm1.emb.class_embedder = dit.transformer_blocks[0].norm1.emb.class_embedder
    assert num_classes_of(dit) == 10 and label_table(dit) == (10, None)
    assert label_table(tiny_dit()) == (10, 10)


def test_training_streams_a_folder_dataset_through_workers(tmp_path):
    """train-teacher on an image folder (decoded in 2 DataLoader workers) gives the run it gives in-process."""
    from tests.pipeline.fixtures import write_image_folder

    root = write_image_folder(tmp_path / "shapes", per_class=6, side=12)
    config = dataclasses.replace(
        TINY_RUN,
        steps=2,
        checkpoint_every=2,
        sample_every=2,
        data=DataConfig(dataset=f"folder:{root}", resolution=8),
        teacher=dataclasses.replace(TINY, num_classes=None),
    )
    inline = load_teacher(train_teacher(config, tmp_path / "inline", progress=False))
    parallel = load_teacher(train_teacher(config, tmp_path / "parallel", runtime=Runtime(workers=2), progress=False))
    assert inline.num_classes == 3 and inline.resolution == 8
    for (name, a), (_, b) in zip(inline.state_dict().items(), parallel.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert (
        RunDir(tmp_path / "inline", command="train-teacher").path.joinpath("config.json").read_text().count("stripes")
        == 1
    )


def test_the_quality_gate_compares_counts_exactly():
    """450 of 500 is 90%: it passes (a float32 mean read it as 0.89999998 and failed it); 449 does not."""
    from clarep_fast.pipeline.teacher.quality import passes_gate

    assert passes_gate(450, 500) and passes_gate(500, 500) and not passes_gate(449, 500)
    assert passes_gate(9, 10) and not passes_gate(8, 10)
    score = torch.cat([torch.ones(450), torch.zeros(50)]).double().mean().item()  # as class_consistency reads it
    assert round(score * 500) == 450 and passes_gate(round(score * 500), 500)
