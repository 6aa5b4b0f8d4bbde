"""Property tests (hypothesis) of the fused CKA on the automatically chosen CPU backend."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from clarep_fast import cka

PROPERTY_SETTINGS = settings(max_examples=40, deadline=None)


@st.composite
def feature_pairs(draw):
    """Random (x, y) with n in [2, 24], widths in [1, 40], a random seed, scale and offset."""
    n = draw(st.integers(2, 24))
    d1, d2 = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    x = torch.randn(n, d1, generator=generator, dtype=torch.float64) * draw(st.floats(0.1, 10.0))
    y = torch.randn(n, d2, generator=generator, dtype=torch.float64) + draw(st.floats(-3.0, 3.0))
    if draw(st.booleans()):  # make them related so CKA is not always near its null value
        y[:, : min(d1, d2)] += x[:, : min(d1, d2)]
    return x, y


def _random_orthogonal(d: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


@PROPERTY_SETTINGS
@given(feature_pairs())
def test_value_in_unit_interval_and_symmetric(pair):
    x, y = pair
    value = cka(x, y)
    assert -1e-12 <= value.item() <= 1 + 1e-12
    assert abs(value.item() - cka(y, x).item()) < 1e-12
    assert abs(cka(x, x).item() - 1.0) < 1e-9 or cka(x, x).item() == 0.0  # 0 only for constant x


@PROPERTY_SETTINGS
@given(feature_pairs(), st.floats(1e-3, 1e3), st.floats(1e-3, 1e3))
def test_invariant_to_isotropic_scaling(pair, scale_x, scale_y):
    x, y = pair
    assert abs(cka(scale_x * x, scale_y * y).item() - cka(x, y).item()) < 1e-9


@PROPERTY_SETTINGS
@given(feature_pairs(), st.integers(0, 2**31 - 1))
def test_invariant_to_orthogonal_transforms(pair, seed):
    x, y = pair
    rotated_x = x @ _random_orthogonal(x.shape[1], seed)
    rotated_y = y @ _random_orthogonal(y.shape[1], seed + 1)
    assert abs(cka(rotated_x, rotated_y).item() - cka(x, y).item()) < 1e-9
