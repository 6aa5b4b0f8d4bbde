"""CLI flags derived from the config dataclasses (clarep_fast/pipeline/options.py) and the commands built on them."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from clarep_fast.pipeline.cli import COMMANDS, build_parser
from clarep_fast.pipeline.clarid.search import SearchConfig
from clarep_fast.pipeline.data import DataConfig
from clarep_fast.pipeline.distill.train import DistillConfig
from clarep_fast.pipeline.options import add_options, config_from_args, option
from clarep_fast.pipeline.teacher.train import TrainTeacherConfig


def parse(config_class, argv):
    parser = argparse.ArgumentParser()
    add_options(parser, config_class)
    return config_from_args(config_class, parser.parse_args(argv))


@pytest.mark.parametrize("config_class", [TrainTeacherConfig, SearchConfig, DistillConfig, DataConfig])
def test_no_flags_give_the_defaults(config_class):
    assert parse(config_class, []) == config_class()


def test_every_kind_of_field():
    config = parse(
        SearchConfig,
        [
            "--t-e",
            "500",
            "-k",
            "8",
            "--no-rescale",
            "--feature-layers",
            "mid_block",
            "down_blocks.1",
            "--count",
            "12",
            "--mode",
            "exact",
            "--rho",
            "0.5",
            "--seed",
            "3",
            "--data-seed",
            "2",
        ],
    )
    assert (config.t_e, config.k, config.rescale, config.count, config.mode, config.seed) == (
        500,
        8,
        False,
        12,
        "exact",
        3,
    )
    assert config.feature_layers == ("mid_block", "down_blocks.1")
    assert config.data == DataConfig(rho=0.5, seed=2)
    assert parse(DistillConfig, ["--baseline", "--student-layers", "1", "2"]).baseline is True
    assert parse(DistillConfig, ["--student-layers", "1", "2"]).student_layers == (1, 2)


def test_a_shared_flag_sets_both_fields():
    config = parse(TrainTeacherConfig, ["--resolution", "32", "--channels", "16", "32"])
    assert config.data.resolution == config.teacher.resolution == 32
    assert config.teacher.channels == (16, 32)


def test_choices_are_enforced():
    with pytest.raises(SystemExit):
        parse(SearchConfig, ["--mode", "fastest"])


def test_a_new_field_is_a_new_flag():
    @dataclasses.dataclass(frozen=True)
    class Toy:
        width: int = option(3, "how wide")
        names: tuple[str, ...] | None = option(None, "some names")
        verbose: bool = option(False, "say more")

    assert parse(Toy, ["--width", "5", "--names", "a", "b", "--verbose"]) == Toy(5, ("a", "b"), True)


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_parses_its_help(command, capsys):
    with pytest.raises(SystemExit) as stop:
        build_parser(command).parse_args([command, "--help"])
    assert stop.value.code == 0
    assert command in capsys.readouterr().out


@pytest.mark.parametrize("text", ["nan", "inf", "-inf"])
def test_floats_must_be_finite(text):
    with pytest.raises(SystemExit):
        parse(TrainTeacherConfig, ["--learning-rate", text])
    with pytest.raises(SystemExit):
        parse(SearchConfig, ["--guidance", text])  # ">= 0" alone admits inf, and nan passes every comparison
    with pytest.raises(ValueError, match="learning_rate must be a finite number"):
        TrainTeacherConfig(learning_rate=float(text))


def test_the_demo_takes_each_command_s_flags_as_that_command_spells_them():
    """DemoConfig's search, distill and evaluate sections: a flag of the demo is the flag of the
    command it configures; the fields the demo sets itself (seeds, banks, data, control) have none."""
    from clarep_fast.pipeline.demo import DemoConfig
    from clarep_fast.pipeline.evaluate.robustness import EvaluateConfig

    argv = ["--seeds", "3", "--bank-per-seed", "-k", "24", "--guidance", "1.5", "--data-seed", "4"]
    argv += ["--epochs", "2", "--lambda-cano", "0.25", "--attacks", "pgd", "--split", "validation"]
    config = parse(DemoConfig, argv)
    assert config.seeds == 3 and config.bank_per_seed
    assert (config.search.k, config.search.guidance, config.search.data.seed) == (24, 1.5, 4)
    assert (config.distill.epochs, config.distill.lambda_cano) == (2, 0.25)
    assert config.evaluate == EvaluateConfig(attacks=("pgd",), split="validation")
    assert parse(DemoConfig, []) == DemoConfig()
    parser = argparse.ArgumentParser()
    add_options(parser, DemoConfig)
    flags = {flag for action in parser._actions for flag in action.option_strings}
    for own_flag_of_the_demo in ("--seed", "--bank", "--baseline", "--bank-samples", "--search-data-seed"):
        assert own_flag_of_the_demo not in flags
    assert config.evaluation(0) == config.evaluate
    cheap = dataclasses.replace(config, full_evaluation_seeds=1, evaluate=EvaluateConfig()).evaluation(1)
    assert cheap.attacks == ("pgd",) and cheap.corruption_samples == 0
