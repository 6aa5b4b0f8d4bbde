"""The CKA reference against an independent float64 formula, its gradients, and its Gram-level twin."""

import numpy as np
import pytest
import torch

from clarep_fast.reference import cka_from_grams_reference, cka_reference


def _hsic_textbook(K: np.ndarray, L: np.ndarray, unbiased: bool) -> float:
    """HSIC straight from the papers' formulas, in numpy float64 (shares no code with the library)."""
    n = K.shape[0]
    if not unbiased:  # Gretton et al. 2005: tr(KHLH) / (n-1)²
        H = np.eye(n) - np.ones((n, n)) / n
        return float(np.trace(K @ H @ L @ H)) / (n - 1) ** 2
    Kt, Lt = K - np.diag(np.diag(K)), L - np.diag(np.diag(L))  # Song et al. 2012, eq. (5)
    one = np.ones(n)
    term = (
        np.trace(Kt @ Lt)
        + (one @ Kt @ one) * (one @ Lt @ one) / ((n - 1) * (n - 2))
        - 2 / (n - 2) * (one @ Kt @ Lt @ one)
    )
    return float(term) / (n * (n - 3))


def _cka_textbook(x: np.ndarray, y: np.ndarray, unbiased: bool) -> float:
    K, L = x @ x.T, y @ y.T
    return _hsic_textbook(K, L, unbiased) / np.sqrt(_hsic_textbook(K, K, unbiased) * _hsic_textbook(L, L, unbiased))


@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("n,d1,d2", [(4, 3, 5), (17, 40, 9), (41, 401, 33)])
def test_reference_matches_textbook_formula(n, d1, d2, unbiased):
    x = torch.randn(n, d1, dtype=torch.float64)
    y = 0.5 * torch.randn(n, d2, dtype=torch.float64) + x[:, :1] * torch.randn(1, d2, dtype=torch.float64)
    expected = _cka_textbook(x.numpy(), y.numpy(), unbiased)
    assert cka_reference(x, y, unbiased=unbiased).item() == pytest.approx(expected, rel=1e-10, abs=1e-12)
    grams = (x @ x.T, y @ y.T)
    assert cka_from_grams_reference(*grams, unbiased=unbiased).item() == pytest.approx(expected, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("unbiased", [False, True])
def test_reference_gradcheck_float64(unbiased):
    x = torch.randn(9, 7, dtype=torch.float64, requires_grad=True)
    y = torch.randn(9, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: cka_reference(a, b, unbiased=unbiased), (x, y))
    gram_x = (x @ x.T).detach().requires_grad_(True)
    gram_y = (y @ y.T).detach().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda k, l: cka_from_grams_reference(k, l, unbiased), (gram_x, gram_y))


def test_reference_constant_input_is_zero_with_finite_gradient():
    x = torch.ones(6, 4, dtype=torch.float64, requires_grad=True)
    y = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    value = cka_reference(x, y)
    value.backward()
    assert value.item() == 0.0
    assert torch.equal(x.grad, torch.zeros_like(x)) and torch.equal(y.grad, torch.zeros_like(y))
