"""The clarep-fast command line: backends listing and the self-check (the pipeline commands: tests/clarid, distill, evaluate)."""

from clarep_fast.pipeline.cli import main


def test_backends_lists_every_backend(capsys):
    assert main(["backends"]) == 0
    printed = capsys.readouterr().out
    for name in ("cuda", "triton", "cpu", "torch"):
        assert name in printed


def test_selfcheck_passes(capsys):
    assert main(["selfcheck", "--quick"]) == 0
    printed = capsys.readouterr().out
    assert "self-check passed" in printed
    assert all(op in printed for op in ("cka", "feature_pool", "project_out", "feature_align")) and "fused is" in printed
