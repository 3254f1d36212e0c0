"""Input validation (ValueError naming the parameter and its allowed range) and honest numerical
failure (NumericalError / converged=False) at the public boundary of dendrite_sim."""
import math

import numpy as np
import pytest
import torch

import dendrite_sim as ds
from dendrite_sim.models import Mixture

F64 = torch.float64


def model64(**kw):
    args = dict(sizes=[4, 4, 4], mu=0.2, feedback="exact", transfer="leaky_relu", seed=0,
                dtype=F64)
    args.update(kw)
    return Mixture(**args)


X = torch.zeros(2, 4, dtype=F64) + 0.1


# ----------------------------------------------------------------------------------------------
# model construction
# ----------------------------------------------------------------------------------------------
def test_exact_inverse_needs_equal_sizes():
    with pytest.raises(ValueError, match=r"(?s)feedback.*sizes") as info:
        Mixture([4, 5, 4], feedback="exact")
    assert "[4, 5, 4]" in str(info.value)
    Mixture([4, 5, 4], feedback="learned")  # fine with learned feedback


@pytest.mark.parametrize("mu", [0.0, 0.5, -1.0, math.nan, 0.7, math.inf])
def test_mu_outside_open_interval(mu):
    with pytest.raises(ValueError, match=r"mu must lie in \(0(\.0)?, 0\.5\)"):
        model64(mu=mu)


@pytest.mark.parametrize("mu", [1e-6, 0.25, 0.499999])
def test_mu_inside_interval_accepted(mu):
    assert model64(mu=mu).mu == mu


@pytest.mark.parametrize("tau", [0.0, -1.0, math.nan])
def test_tau_not_positive(tau):
    with pytest.raises(ValueError, match=r"tau must lie in \(0(\.0)?, "):
        model64(tau=tau)


@pytest.mark.parametrize("name", ["relu", "softplus", "TANH"])
def test_unknown_transfer(name):
    with pytest.raises(ValueError, match="transfer must be one of"):
        model64(transfer=name)


def test_slope_out_of_range_in_model():
    with pytest.raises(ValueError, match=r"slope must lie in \(0(\.0)?, 1(\.0)?\]"):
        model64(slope=0.0)


def test_unknown_feedback_and_form_and_bad_sizes():
    with pytest.raises(ValueError, match="feedback must be one of"):
        model64(feedback="approximate")
    with pytest.raises(ValueError, match="form must be one of"):
        model64(feedback="learned", form="dtp")
    with pytest.raises(ValueError, match="sizes"):
        Mixture([4])
    with pytest.raises(ValueError, match="sizes"):
        Mixture([4, 0, 3], feedback="learned")


def test_replace_revalidates_mu():
    m = model64()
    with pytest.raises(ValueError, match=r"mu must lie in"):
        m.replace(mu=0.6)


# ----------------------------------------------------------------------------------------------
# inputs and targets of the verbs
# ----------------------------------------------------------------------------------------------
VERBS = {
    "simulate": lambda m, x, target=None: ds.simulate(m, x, [0.0, 0.1], target=target),
    "fixed_point": lambda m, x, target=None: ds.fixed_point(m, x, target=target),
    "jacobian": lambda m, x, target=None: ds.jacobian(
        m, x, torch.zeros(x.shape[0] if x.dim() == 2 else 1, 8, dtype=F64), target=target),
}


@pytest.mark.parametrize("verb", VERBS)
def test_x_wrong_width(verb):
    with pytest.raises(ValueError, match=r"x must have shape \(batch, 4\); got \(2, 5\)"):
        VERBS[verb](model64(), torch.zeros(2, 5, dtype=F64))


@pytest.mark.parametrize("verb", VERBS)
def test_x_wrong_dtype(verb):
    with pytest.raises(ValueError, match=r"x must have dtype torch.float64"):
        VERBS[verb](model64(), torch.zeros(2, 4, dtype=torch.float32))


@pytest.mark.parametrize("verb", VERBS)
def test_x_wrong_device(verb):
    x = torch.zeros(2, 4, dtype=F64, device="meta")
    with pytest.raises(ValueError, match=r"x must be on device cpu"):
        VERBS[verb](model64(), x)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("verb", VERBS)
def test_x_not_finite(verb, bad):
    x = X.clone()
    x[1, 2] = bad
    with pytest.raises(ValueError, match=r"x must be finite"):
        VERBS[verb](model64(), x)


def test_x_not_a_tensor():
    with pytest.raises(ValueError, match=r"x must be a torch.Tensor"):
        ds.simulate(model64(), np.zeros((2, 4)), [0.0, 1.0])


@pytest.mark.parametrize("verb", VERBS)
def test_target_wrong_width(verb):
    with pytest.raises(ValueError, match=r"target must have shape \(batch, 4\); got \(2, 3\)"):
        VERBS[verb](model64(), X, torch.zeros(2, 3, dtype=F64))
    with pytest.raises(ValueError, match=r"target must have shape \(batch, 4\)"):
        VERBS[verb](model64(), X, ds.Nudge(torch.zeros(2, 5, dtype=F64), "mse"))


@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("verb", VERBS)
def test_target_not_finite(verb, bad):
    y = torch.zeros(2, 4, dtype=F64)
    y[0, 1] = bad
    with pytest.raises(ValueError, match=r"target must be finite"):
        VERBS[verb](model64(), X, y)
    with pytest.raises(ValueError, match=r"target must be finite"):
        VERBS[verb](model64(), X, ds.Nudge(y, "mse"))


def test_target_wrong_dtype_and_batch():
    with pytest.raises(ValueError, match=r"target must have dtype torch.float64"):
        ds.simulate(model64(), X, [0.0, 1.0], target=torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"target must have the batch size of x \(2\)"):
        ds.simulate(model64(), X, [0.0, 1.0], target=torch.zeros(3, 4, dtype=F64))


def test_nudge_arguments():
    with pytest.raises(ValueError, match=r"loss must be one of"):
        ds.Nudge(torch.zeros(2, 4, dtype=F64), loss="hinge")
    with pytest.raises(ValueError, match=r"eta_hat must lie in \(0(\.0)?, inf"):
        ds.Nudge(torch.zeros(2, 4, dtype=F64), eta_hat=0.0)
    with pytest.raises(ValueError, match=r"target labels must lie in \[0, 3\]"):
        ds.simulate(model64(), X, [0.0, 1.0],
                    target=ds.Nudge(torch.tensor([0, 4]), loss="cross_entropy"))
    with pytest.raises(ValueError, match=r"target must be None"):
        ds.simulate(model64(), X, [0.0, 1.0], target=[0.0, 1.0, 0.0, 0.0])


def test_state_wrong_shape_for_jacobian():
    with pytest.raises(ValueError, match=r"state must have shape \(batch, 8\)"):
        ds.jacobian(model64(), X, torch.zeros(2, 7, dtype=F64))
    with pytest.raises(ValueError, match=r"state must have the batch size of x \(2\)"):
        ds.jacobian(model64(), X, torch.zeros(3, 8, dtype=F64))


# ----------------------------------------------------------------------------------------------
# transfer domain
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [1.0, -1.0, 1.5, -3.0])
def test_tanh_inverse_outside_domain(bad):
    m = model64(transfer="tanh")
    y = torch.tensor([0.2, bad], dtype=F64)
    with pytest.raises(ValueError, match=r"tanh inverse.*\(-1(\.0)?, 1(\.0)?\)"):
        m.pathways.transfers[0].inverse(y)
    with pytest.raises(ValueError, match=r"tanh inverse.*\(-1(\.0)?, 1(\.0)?\)"):
        ds.make_transfer("tanh").inverse(y)


# ----------------------------------------------------------------------------------------------
# integration arguments
# ----------------------------------------------------------------------------------------------
def test_unknown_method():
    with pytest.raises(ValueError, match=r"method must be one of"):
        ds.simulate(model64(), X, [0.0, 1.0], method="rk45")
    with pytest.raises(ValueError, match=r"method must be one of"):
        ds.fixed_point(model64(), X, method="bisection")


@pytest.mark.parametrize("method", ["euler", "rk4", "midpoint"])
def test_fixed_step_method_needs_step_size(method):
    with pytest.raises(ValueError, match=r"step_size"):
        ds.simulate(model64(), X, [0.0, 1.0], method=method)
    tr = ds.simulate(model64(), X, [0.0, 1.0], method=method, step_size=0.1)
    assert tr.layers[0].shape == (2, 2, 4)


@pytest.mark.parametrize("step", [0.0, -0.1, math.nan])
def test_step_size_must_be_positive(step):
    with pytest.raises(ValueError, match=r"step_size must lie in \(0"):
        ds.simulate(model64(), X, [0.0, 1.0], method="rk4", step_size=step)


@pytest.mark.parametrize("t", [[0.0, 1.0, 1.0], [1.0, 0.0], [0.0, 2.0, 1.0], [0.0, math.nan],
                               [0.0, math.inf]])
def test_times_must_increase_strictly(t):
    with pytest.raises(ValueError, match=r"t must be finite and strictly increasing"):
        ds.simulate(model64(), X, t)


@pytest.mark.parametrize("t", [[0.0], [], [[0.0, 1.0]]])
def test_times_shape(t):
    with pytest.raises(ValueError, match=r"t must be a 1-D sequence of at least 2 times"):
        ds.simulate(model64(), X, t)


@pytest.mark.parametrize("name", ["rtol", "atol"])
def test_tolerances_positive(name):
    with pytest.raises(ValueError, match=name + r" must lie in \(0"):
        ds.simulate(model64(), X, [0.0, 1.0], **{name: 0.0})


# ----------------------------------------------------------------------------------------------
# numerical failure is reported, never silent
# ----------------------------------------------------------------------------------------------
def _unstable_linear(gain=10.0):
    """Identity transfer, exact inverses, feedback gain c = 10, mu = 0.1, L = 3: the clamped
    linearisation has eigenvalues -1 + 2 sqrt(c mu (1-mu)) cos(k pi/4) (closed form of
    test_jacobian.py), the largest +0.342 > 0, so any state away from the equilibrium grows
    like exp(0.342 t)."""
    return Mixture([3, 3, 3, 3], mu=0.1, feedback="exact", transfer="identity", seed=1,
                   dtype=F64, feedback_gain=gain)


def _tanh_out_of_range():
    """tanh, exact inverses, mu = 0.4, clamp target 5: the top layer is pulled to
    h_L ~ 0.6 tanh(.) + 0.4 * 5 > 1, where g_{L-1} = W^{-1} atanh(h_L) is NaN. No equilibrium
    exists (at any fixed point h_L >= 2 - 0.6 > 1)."""
    m = Mixture([3, 3, 3], mu=0.4, feedback="exact", transfer="tanh", seed=1, dtype=F64)
    x = 0.3 * torch.randn(2, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    return m, x, torch.full((2, 3), 5.0, dtype=F64)


def test_blow_up_raises_numerical_error():
    m = _unstable_linear()
    x = torch.ones(2, 3, dtype=F64)
    with pytest.raises(ds.NumericalError, match="blew up"):
        ds.simulate(m, x, [0.0, 60.0], target=torch.zeros(2, 3, dtype=F64))


def test_nan_with_fixed_step_raises_numerical_error():
    m, x, y = _tanh_out_of_range()
    with pytest.raises(ds.NumericalError, match="NaN"):
        ds.simulate(m, x, [0.0, 10.0], target=y, method="rk4", step_size=0.01)


# Regression guards: at commit 7c35452 an adaptive method hitting NaN/inf made torchdiffeq raise
# AssertionError('underflow in dt 0.0') (rk_common.py:284) before integrate.py's _check_finite
# ran, and fixed_point's fallback (which only catches NumericalError) let it escape.
def test_nan_with_adaptive_method_raises_numerical_error():
    m, x, y = _tanh_out_of_range()
    with pytest.raises(ds.NumericalError):
        ds.simulate(m, x, [0.0, 20.0], target=y)


def test_overflow_to_inf_with_adaptive_method_raises_numerical_error():
    m = _unstable_linear(gain=100.0)  # growth rate ~ +3.2 from a start near the float max
    x = torch.ones(2, 3, dtype=F64)
    y0 = torch.full((2, 9), 1e300, dtype=F64)
    with pytest.raises(ds.NumericalError):
        ds.simulate(m, x, [0.0, 1000.0], target=torch.zeros(2, 3, dtype=F64), y0=y0)


def test_fixed_point_without_equilibrium_is_honest():
    m, x, y = _tanh_out_of_range()
    try:
        eq = ds.fixed_point(m, x, target=y)
    except ds.NumericalError:
        return
    assert not bool(eq.converged.any())
    assert not bool((eq.residual <= eq.tol).any())


def _linear_equilibrium(m, x, yc):
    """The equilibrium of the linear network (identity transfer, exact inverses, gain c),
    solved directly with numpy: rows i of  -h_i + (1-mu) W_i h_{i-1} + mu c W_{i+1}^{-1} h_{i+1}
    (+ mu y for the top row) = 0."""
    W = [w.numpy() for w in m.params["W"]]
    mu, c, n, L = m.mu, m.feedback_gain, 3, 3
    A = -np.eye(n * L)
    for i in range(1, L):
        A[i * n:(i + 1) * n, (i - 1) * n:i * n] = (1 - mu) * W[i]
        A[(i - 1) * n:i * n, i * n:(i + 1) * n] = mu * c * np.linalg.inv(W[i])
    rhs = np.zeros((x.shape[0], n * L))
    rhs[:, :n] = -(1 - mu) * x @ W[0].T
    rhs[:, -n:] = -mu * yc
    return np.linalg.solve(A, rhs.T).T, A


def test_fixed_point_of_unstable_system_is_honest():
    """An unstable but existing equilibrium (linear, nonsingular): whatever fixed_point returns,
    its flags must tell the truth -- residual equal to the independent numpy |dy/dt|, and
    converged only where the state is the numpy-solved equilibrium -- and the spectrum there
    is unstable."""
    m = _unstable_linear()
    rng = np.random.default_rng(3)
    x, yc = rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
    y_true, A = _linear_equilibrium(m, x, yc)
    eq = ds.fixed_point(m, torch.tensor(x), target=torch.tensor(yc))
    y = eq.y.numpy()
    rhs = np.zeros_like(y)
    rhs[:, :3] = -(1 - m.mu) * x @ m.params["W"][0].numpy().T
    rhs[:, -3:] = -m.mu * yc
    residual = np.abs(y @ A.T - rhs).max(-1)  # |dy/dt| (tau = 1) from the numpy matrix
    np.testing.assert_allclose(eq.residual.numpy(), residual, rtol=1e-9, atol=1e-12)
    conv = eq.converged.numpy()
    assert np.array_equal(conv, residual <= eq.tol)
    np.testing.assert_allclose(y[conv], y_true[conv], atol=1e-8)  # cond(A) ~ 18
    sp = ds.spectrum(m, torch.tensor(x), torch.tensor(y_true), target=torch.tensor(yc))
    assert not bool(sp.stable.any())
    assert np.linalg.eigvals(A).real.max() == pytest.approx(sp.max_real[0].item(), abs=1e-10)


def test_fixed_point_finds_unstable_equilibrium_of_linear_system():
    """SPEC §3 asks for root-finding, not only integration: an unstable equilibrium of a
    nonsingular linear system (cond 18) is one Newton step away. (Regression guard: the
    pseudo-transient solver of commit 7c35452 followed the dynamics away from it and ended
    with residual ~50, converged=False.)"""
    m = _unstable_linear()
    rng = np.random.default_rng(3)
    x, yc = rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
    y_true, _ = _linear_equilibrium(m, x, yc)
    eq = ds.fixed_point(m, torch.tensor(x), target=torch.tensor(yc))
    assert bool(eq.converged.all())
    np.testing.assert_allclose(eq.y.numpy(), y_true, atol=1e-8)


def test_fixed_point_by_integration_of_unstable_system_does_not_converge():
    """Integration cannot reach an unstable equilibrium: the result must say so (or raise)."""
    m = _unstable_linear()
    x = torch.ones(2, 3, dtype=F64)
    try:
        eq = ds.fixed_point(m, x, target=torch.zeros(2, 3, dtype=F64), method="integrate")
    except ds.NumericalError:
        return
    assert not bool(eq.converged.any())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_all_finite_finds_every_nan_and_inf(dtype):
    """Against ``torch.isfinite(...).all()``: one bad entry anywhere (first, last, inside a
    vectorised block, in a large tensor), of each kind; empty and integer tensors."""
    from dendrite_sim.errors import all_finite
    gen = torch.Generator().manual_seed(0)
    for shape in [(1,), (7,), (33, 17), (4096, 3)]:
        base = torch.randn(shape, generator=gen, dtype=dtype) * 1e30
        assert all_finite(base)
        flat = base.flatten()
        for position in {0, flat.numel() // 2, flat.numel() - 1}:
            for bad in (float("nan"), float("inf"), -float("inf")):
                broken = flat.clone()
                broken[position] = bad
                assert all_finite(broken.view(shape)) == bool(torch.isfinite(broken).all())
                assert not all_finite(broken.view(shape))
    assert all_finite(torch.empty(0, 3, dtype=dtype))
    assert all_finite(torch.arange(5))


# ----------------------------------------------------------------------------------------------
# each numerical guard, driven: the error names its cause
# ----------------------------------------------------------------------------------------------
def test_guard_diverging_learning_rate_names_the_stiffness():
    """Rates eta = eta_inv = 1e8 in a coupled presentation: the weights move ~1e8 times faster
    than the neurons, the adaptive integrator cannot keep up, and says so."""
    from dendrite_sim.dynamics.integrators import Integrator
    from dendrite_sim.learning.presentation import present
    m = Mixture([3, 3, 3], mu=0.2, feedback="learned", eta=1e8, eta_inv=1e8, dtype=F64)
    x, y = torch.full((2, 3), 0.5, dtype=F64), torch.full((2, 3), 3.0, dtype=F64)
    with pytest.raises(ds.NumericalError, match=r"stiff or fast system|blew up|NaN"):
        present(m, x, ds.Nudge(y, eta_hat=1.0), m.default_schedule(T=5.0), mode="coupled",
                integrator=Integrator("dopri5", max_steps=300))


def test_guard_tanh_inverse_out_of_range_names_the_domain():
    """A tanh network at a state outside (-1, 1): the Jacobian (atanh of it) is NaN and is
    refused before LAPACK sees it, with the inverse domain named."""
    m = model64(transfer="tanh")
    with pytest.raises(ds.NumericalError, match=r"(?s)Jacobian.*non-finite.*inverse domain.*tanh"):
        ds.jacobian(m, X, torch.full((2, 8), 1.5, dtype=F64))
    with pytest.raises(ds.NumericalError, match=r"inverse domain"):
        ds.spectrum(m, X, torch.full((2, 8), 1.5, dtype=F64))


def test_guard_unstable_equilibrium_names_the_blow_up():
    """Integrating toward an unstable equilibrium blows up (|state| > max_abs, named); its
    spectrum, from the numpy-solved equilibrium, is unstable."""
    m = _unstable_linear()
    rng = np.random.default_rng(3)
    x, yc = rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
    y_true, _ = _linear_equilibrium(m, x, yc)
    with pytest.raises(ds.NumericalError, match=r"blew up: \|state\| reached .* > max_abs"):
        ds.simulate(m, torch.tensor(x), [0.0, 60.0], target=torch.tensor(yc),
                    y0=torch.tensor(y_true) + 1e-3)
    assert not bool(ds.spectrum(m, torch.tensor(x), torch.tensor(y_true),
                                target=torch.tensor(yc)).stable.any())


def test_guard_singular_forward_weights_with_exact_feedback():
    m = model64()
    params = {"W": [torch.zeros(4, 4, dtype=F64), m.params["W"][1]], "b": [None, None]}
    with pytest.raises(ds.NumericalError, match=r"W_1 is singular"):
        ds.jacobian(m, X, torch.zeros(2, 8, dtype=F64), params=params)


# ----------------------------------------------------------------------------------------------
# typed constructor arguments, params, gates
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, error, text", [
    (dict(mu="0.2"), TypeError, "mu must be a real number"),
    (dict(tau="1"), TypeError, "tau must be a real number"),
    (dict(eta_inv="0.1"), TypeError, "eta_inv must be a real number"),
    (dict(mu=True), TypeError, "mu must be a real number"),
    (dict(dtype=torch.int64), TypeError, "dtype must be torch.float32 or torch.float64"),
    (dict(dtype=torch.float16), TypeError, "dtype must be"),
    (dict(dtype="float64"), TypeError, "dtype must be"),
    (dict(device="meta"), ValueError, "device must be 'cpu' or an available CUDA"),
    (dict(device="junk"), ValueError, "device must name a torch device"),
    (dict(device=None), TypeError, "device must be a torch.device"),
    (dict(seed=2 ** 70), ValueError, r"seed must lie in \[0, "),
    (dict(seed=1.5), TypeError, "seed must be an integer"),
    (dict(sizes="33"), TypeError, "sizes must be a list of positive integers"),
    (dict(sizes=[3.5, 2]), TypeError, r"sizes\[0\] must be an integer"),
    (dict(sizes=[4, 0, 4]), ValueError, r"sizes\[1\] must lie in \[1, "),
    (dict(bias="no"), TypeError, "bias must be True or False"),
    (dict(compensate_decay=1), TypeError, "compensate_decay must be True or False"),
])
def test_constructor_argument_types(kwargs, error, text):
    with pytest.raises(error, match=text):
        model64(**kwargs)


def test_constructor_accepts_numpy_numbers_and_stores_floats():
    m = model64(mu=np.float64(0.25), tau=np.int64(2), sizes=[np.int64(4)] * 3)
    assert m.mu == 0.25 and isinstance(m.mu, float) and m.tau == 2.0 and m.sizes == [4, 4, 4]


@pytest.mark.parametrize("mutate, text", [
    (lambda p: p.pop("b"), r"params must have the names \['W', 'b'\]"),
    (lambda p: p.update(W=p["W"][:1]), r"params\['W'\] must be a list of 2 entries"),
    (lambda p: p["W"].__setitem__(1, p["W"][1].float()), r"params\['W'\]\[1\] must have"),
    (lambda p: p["W"].__setitem__(0, torch.full((4, 4), math.nan, dtype=F64)),
     r"params\['W'\]\[0\] must be finite"),
    (lambda p: p["b"].__setitem__(0, torch.zeros(4, dtype=F64)),
     r"params\['b'\]\[0\] must be None"),
])
def test_params_checked_at_the_verbs(mutate, text):
    m = model64()
    params = {k: list(v) for k, v in m.params.items()}
    mutate(params)
    with pytest.raises(ValueError, match=text):
        ds.jacobian(m, X, torch.zeros(2, 8, dtype=F64), params=params)
    with pytest.raises(ValueError, match=text):
        ds.continuation(m, X, "mu", [0.1, 0.2], params=params)


def test_gates_dict_of_constants_equals_callable():
    m = model64()
    y = torch.full((2, 8), 0.1, dtype=F64)
    target = torch.zeros(2, 4, dtype=F64)
    as_dict = ds.jacobian(m, X, y, target, gates={"teach": 0.0})
    as_call = ds.jacobian(m, X, y, target, gates=lambda t: {"teach": 0.0})
    free = ds.jacobian(m, X, y)
    assert torch.equal(torch.Tensor(as_dict), torch.Tensor(as_call))
    assert torch.equal(torch.Tensor(as_dict), torch.Tensor(free))   # teach off = free
    with pytest.raises(TypeError, match=r"gates\['teach'\] must be a real number"):
        ds.jacobian(m, X, y, gates={"teach": "on"})
    with pytest.raises(TypeError, match="gates must be None, a dict"):
        ds.jacobian(m, X, y, gates=3)


def test_empty_batch_and_bool_labels_and_bad_setter():
    m = model64()
    with pytest.raises(ValueError, match="x must hold at least one example"):
        ds.fixed_point(m, X[:0])
    with pytest.raises(ValueError, match="got a bool tensor"):
        ds.fixed_point(m, X, ds.Nudge(torch.tensor([True, False]), loss="cross_entropy"))
    with pytest.raises(TypeError, match="must return a model; it returned NoneType"):
        ds.continuation(m, X, lambda model, value: None, [0.1, 0.2])
