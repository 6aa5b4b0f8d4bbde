"""fold_batchnorm: the folded copy computes the same function and input gradient as the eval model."""

import pytest
import torch
from torch import nn

from clarep_fast.pipeline.distill.student import Student
from clarep_fast.pipeline.evaluate.fold import fold_batchnorm


def _randomize_batchnorms(model: nn.Module, generator: torch.Generator) -> None:
    """Statistics and affine parameters far from the identity (a fresh BatchNorm folds to a no-op)."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            channels = module.num_features
            module.running_mean.copy_(torch.randn(channels, generator=generator, dtype=torch.float64))
            module.running_var.copy_(torch.rand(channels, generator=generator, dtype=torch.float64) * 3 + 0.1)
            if module.affine:
                module.weight.data.copy_(torch.randn(channels, generator=generator, dtype=torch.float64))
                module.bias.data.copy_(torch.randn(channels, generator=generator, dtype=torch.float64))


def _logits_and_input_gradient(model: nn.Module, images: torch.Tensor, labels: torch.Tensor):
    images = images.clone().requires_grad_(True)
    logits = model(images)
    (gradient,) = torch.autograd.grad(nn.functional.cross_entropy(logits, labels), images)
    return logits.detach(), gradient


def _assert_same_function(original: nn.Module, folded: nn.Module, shape, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(*shape, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 10, (shape[0],), generator=generator)
    expected = _logits_and_input_gradient(original.eval(), images, labels)
    actual = _logits_and_input_gradient(folded, images, labels)
    torch.testing.assert_close(actual[0], expected[0], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(actual[1], expected[1], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("seed,shape", [(0, (5, 3, 16, 16)), (1, (3, 3, 13, 19)), (2, (1, 3, 32, 32))])
def test_student_folds_every_batchnorm_and_keeps_its_function(seed, shape):
    generator = torch.Generator().manual_seed(seed)
    student = Student("test_resnet", 10, (1, 2)).double()
    _randomize_batchnorms(student, generator)
    before = sum(isinstance(m, nn.BatchNorm2d) for m in student.modules())
    folded = fold_batchnorm(student)
    assert before > 0 and not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert not any(p.requires_grad for p in folded.parameters()) and not folded.training
    _assert_same_function(student, folded, shape, seed)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in student.modules()) == before  # the original is untouched


class _Branches(nn.Module):
    """A conv whose output also feeds a second branch (not foldable), a bias-free conv before a
    BatchNorm without affine parameters (foldable), and a BatchNorm after a non-conv."""

    def __init__(self):
        super().__init__()
        self.shared = nn.Conv2d(3, 4, 3, padding=1)
        self.shared_norm = nn.BatchNorm2d(4)
        self.plain = nn.Conv2d(4, 4, 1, bias=False)
        self.plain_norm = nn.BatchNorm2d(4, affine=False)
        self.after_relu_norm = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 10)

    def forward(self, x):
        shared = self.shared(x)
        y = self.shared_norm(shared) + shared
        y = self.plain_norm(self.plain(y))
        y = self.after_relu_norm(torch.relu(y))
        return self.head(y.mean((2, 3)))


def test_only_safe_pairs_fold():
    model = _Branches().double()
    _randomize_batchnorms(model, torch.Generator().manual_seed(3))
    folded = fold_batchnorm(model)
    left = {name for name, m in folded.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert left == {"shared_norm", "after_relu_norm"}
    assert folded.plain.bias is not None
    _assert_same_function(model, folded, (4, 3, 7, 9), 3)


class _Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.norm, self.head = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 10)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
            x = self.norm(self.conv(x))
        return self.head(x.mean((2, 3)))


def test_untraceable_model_is_evaluated_unfolded_with_a_warning():
    model = _Untraceable().double()
    _randomize_batchnorms(model, torch.Generator().manual_seed(4))
    with pytest.warns(UserWarning, match="cannot be traced"):
        folded = fold_batchnorm(model)
    assert isinstance(folded.norm, nn.BatchNorm2d) and not any(p.requires_grad for p in folded.parameters())
    _assert_same_function(model, folded, (2, 3, 8, 8), 4)
