"""Transfer functions (SPEC §1): values, inverses, derivatives and input validation.

Every check compares ``dendrite_sim.transfer`` against an independent numpy formula or a
numerical derivative; nothing is compared with the module under test itself.
"""
import math

import numpy as np
import pytest
import torch

from dendrite_sim import make_transfer
from dendrite_sim.transfer import TRANSFERS


def _np_forward(name, a, slope=0.1):
    if name == "identity":
        return a.copy()
    if name == "leaky_relu":
        return np.where(a >= 0, a, slope * a)
    if name == "tanh":
        return np.tanh(a)
    if name == "sigmoid":
        return 1.0 / (1.0 + np.exp(-a))
    raise AssertionError(name)


def _np_inverse(name, y, slope=0.1):
    if name == "identity":
        return y.copy()
    if name == "leaky_relu":
        return np.where(y >= 0, y, y / slope)
    if name == "tanh":
        return np.arctanh(y)
    if name == "sigmoid":
        return np.log(y / (1.0 - y))
    raise AssertionError(name)


CASES = [("identity", 0.1), ("leaky_relu", 0.1), ("leaky_relu", 0.37), ("leaky_relu", 1.0),
         ("tanh", 0.1), ("sigmoid", 0.1)]


def _points(seed=0, n=2001, width=4.0):
    rng = np.random.default_rng(seed)
    a = rng.uniform(-width, width, size=n)
    # stay away from the leaky-ReLU kink at 0 (finite differences straddling it are wrong)
    return a[np.abs(a) > 1e-3]


def test_registry_lists_the_four_transfers():
    assert set(TRANSFERS) == {"identity", "leaky_relu", "tanh", "sigmoid"}


@pytest.mark.parametrize("name,slope", CASES)
def test_forward_matches_numpy_formula(name, slope):
    a = _points(1)
    s = make_transfer(name, slope)
    got = s(torch.tensor(a, dtype=torch.float64)).numpy()
    # same float64 formulas evaluated by two libraries: agreement to a few ulp
    np.testing.assert_allclose(got, _np_forward(name, a, slope), rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("name,slope", CASES)
def test_inverse_undoes_forward(name, slope):
    # |a| <= 4: for tanh 1 - tanh(4)^2 = 1.3e-3, so atanh amplifies the rounding of tanh(a)
    # (~1e-16) by at most 1/(1-y^2) ~ 1e3; 1e-11 leaves two more orders of margin.
    a = _points(2)
    s = make_transfer(name, slope)
    at = torch.tensor(a, dtype=torch.float64)
    np.testing.assert_allclose(s.inverse(s(at)).numpy(), a, rtol=1e-11, atol=1e-11)
    # and the inverse itself is the independent numpy inverse
    y = _np_forward(name, a, slope)
    np.testing.assert_allclose(s.inverse(torch.tensor(y)).numpy(), _np_inverse(name, y, slope),
                               rtol=1e-13, atol=1e-13)
    # s(s^{-1}(y)) == y on the range
    np.testing.assert_allclose(s(s.inverse(torch.tensor(y))).numpy(), y, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("name,slope", CASES)
def test_derivative_matches_central_difference(name, slope):
    # central difference with step h = 1e-6: truncation h^2 |s'''| / 6 <= 1e-12 (|s'''| <= 2
    # for tanh/sigmoid, 0 for the piecewise linear ones away from the kink) and rounding
    # ~ eps |s| / h ~ 1e-9 for |s| <= 4, so 1e-8 is a safe absolute tolerance.
    a = _points(3)
    h = 1e-6
    fd = (_np_forward(name, a + h, slope) - _np_forward(name, a - h, slope)) / (2 * h)
    s = make_transfer(name, slope)
    got = s.derivative(torch.tensor(a, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(got, fd, rtol=0, atol=1e-8)


@pytest.mark.parametrize("name,slope", CASES)
def test_backprop_is_central_difference_times_error(name, slope):
    # s'(a) * e (the fused product the plasticity rules use) against the same central
    # difference as above, times a random error e of either sign; float32 keeps its dtype.
    a = _points(5)
    e = np.random.default_rng(7).standard_normal(a.shape)
    h = 1e-6
    fd = (_np_forward(name, a + h, slope) - _np_forward(name, a - h, slope)) / (2 * h)
    s = make_transfer(name, slope)
    got = s.backprop(torch.tensor(a), torch.tensor(e)).numpy()
    np.testing.assert_allclose(got, fd * e, rtol=0, atol=1e-8 * np.abs(e).max())
    a32 = torch.tensor(a, dtype=torch.float32)
    assert s.backprop(a32, torch.ones_like(a32)).dtype == torch.float32


@pytest.mark.parametrize("name,slope", CASES)
def test_derivative_of_inverse_is_reciprocal(name, slope):
    # (s^{-1})'(y) = 1 / s'(s^{-1}(y)): finite difference of the engine's inverse, same
    # step/tolerance argument as above (|(s^{-1})''| is at most ~1e3 for tanh at |a| <= 3).
    a = _points(4, width=3.0)
    s = make_transfer(name, slope)
    y = _np_forward(name, a, slope)
    h = 1e-7
    inv = lambda v: s.inverse(torch.tensor(v)).numpy()  # noqa: E731
    fd = (inv(y + h) - inv(y - h)) / (2 * h)
    expected = 1.0 / s.derivative(torch.tensor(a)).numpy()
    np.testing.assert_allclose(fd, expected, rtol=1e-6, atol=1e-6)


def test_leaky_relu_derivative_values():
    # at the kink a = 0 the left derivative (autograd's convention), in both the derivative
    # and the fused backprop
    s = make_transfer("leaky_relu", 0.25)
    a = torch.tensor([-3.0, -1e-9, 0.0, 1e-9, 2.0], dtype=torch.float64)
    np.testing.assert_array_equal(s.derivative(a).numpy(), [0.25, 0.25, 0.25, 1.0, 1.0])
    np.testing.assert_array_equal(s.backprop(a, torch.full_like(a, 2.0)).numpy(),
                                  [0.5, 0.5, 0.5, 2.0, 2.0])


def test_dtype_is_preserved():
    for name in TRANSFERS:
        s = make_transfer(name)
        a = torch.linspace(-0.5, 0.5, 7, dtype=torch.float32)
        assert s(a).dtype == torch.float32
        assert s.derivative(a).dtype == torch.float32


@pytest.mark.parametrize("bad", [1.0, -1.0, 1.5, -7.0, float("inf")])
def test_tanh_inverse_outside_open_interval_raises(bad):
    s = make_transfer("tanh")
    y = torch.tensor([0.0, 0.5, bad], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"\(-1(\.0)?, 1(\.0)?\)"):
        s.inverse(y)


def test_tanh_inverse_inside_interval_is_fine():
    s = make_transfer("tanh")
    y = torch.tensor([-0.999999, 0.0, 0.999999], dtype=torch.float64)
    assert torch.isfinite(s.inverse(y)).all()


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.2, 1.2])
def test_sigmoid_inverse_outside_open_interval_raises(bad):
    s = make_transfer("sigmoid")
    with pytest.raises(ValueError, match=r"\(0(\.0)?, 1(\.0)?\)"):
        s.inverse(torch.tensor([0.5, bad], dtype=torch.float64))


@pytest.mark.parametrize("name", ["relu", "Tanh", "softplus", ""])
def test_unknown_transfer_name_raises(name):
    with pytest.raises(ValueError, match="transfer must be one of"):
        make_transfer(name)


@pytest.mark.parametrize("slope", [0.0, -0.1, 1.0001, 2.0, math.nan, math.inf])
def test_slope_outside_half_open_unit_interval_raises(slope):
    with pytest.raises(ValueError, match=r"slope must lie in \(0(\.0)?, 1(\.0)?\]"):
        make_transfer("leaky_relu", slope)


def test_slope_at_upper_end_is_identity():
    s = make_transfer("leaky_relu", 1.0)
    a = torch.tensor(_points(5))
    assert torch.equal(s(a), a)
