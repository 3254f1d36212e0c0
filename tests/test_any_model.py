"""The engine runs a model outside the mixing family (tests/two_compartment.py) through every
verb, both presentation modes and training, and reads models only through their contract."""
import ast
import pathlib

import numpy as np
import pytest
import scipy.integrate
import torch

import dendrite_sim
from dendrite_sim import continuation, fixed_point, jacobian, simulate, spectrum
from dendrite_sim.dynamics.model import CONTRACT
from dendrite_sim.frontend.data import Dataset
from dendrite_sim.learning import BackpropLearner, DendriticLearner, present, train
from dendrite_sim.learning.diagnostics import layer_diagnostics
from two_compartment import TwoCompartment

F64 = torch.float64


def _x(batch=5, width=4, seed=0):
    return torch.randn(batch, width, generator=torch.Generator().manual_seed(seed), dtype=F64)


def test_simulate_matches_scipy_and_settles_at_the_forward_map():
    model, x = TwoCompartment([4, 5, 3]), _x()
    t = torch.linspace(0.0, 40.0, 5, dtype=F64)
    traj = simulate(model, x, t, rtol=1e-9, atol=1e-11)
    drive, P = model.drive(x), model.prepare(model.params)

    def rhs(_, flat):
        y = torch.as_tensor(flat, dtype=F64).reshape(x.shape[0], -1)
        return model.field(0.0, y, drive, P).reshape(-1).numpy()
    ref = scipy.integrate.solve_ivp(rhs, (0.0, 40.0), np.zeros(x.shape[0] * model.state_size),
                                    t_eval=t.numpy(), method="DOP853", rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(traj.y.reshape(5, -1).numpy(), ref.y.T, atol=1e-7)
    torch.testing.assert_close(model.output(traj.final), model.forward(model.params, x),
                               atol=1e-6, rtol=0)
    assert traj.layers[-1].shape == (5, 5, 3)                 # the activity r, per layer


def test_fixed_point_jacobian_spectrum_continuation():
    model, x = TwoCompartment([4, 5, 3], tau_v=0.1, tau_r=3.0), _x()
    eq = fixed_point(model, x)
    assert eq.all_converged
    torch.testing.assert_close(eq.layers[-1], model.forward(model.params, x), atol=1e-9,
                               rtol=0)
    # the Jacobian against finite differences of the field
    drive, P = model.drive(x), model.prepare(model.params)
    J = torch.Tensor(jacobian(model, x, eq))
    eps, k = 1e-6, 3
    bump = torch.zeros(model.state_size, dtype=F64)
    bump[k] = eps
    fd = (model.field(0.0, eq.y + bump, drive, P) - model.field(0.0, eq.y - bump, drive, P)) \
        / (2 * eps)
    torch.testing.assert_close(J[:, :, k], fd, atol=1e-8, rtol=0)
    # the free system is feed-forward: block triangular, eigenvalues -1/tau_v and -1/tau_r
    spec = spectrum(model, x, eq)
    real = np.sort(spec.eigenvalues.real.numpy(), axis=-1)
    want = np.sort([-1 / 0.1] * 8 + [-1 / 3.0] * 8)
    np.testing.assert_allclose(real, np.broadcast_to(want, real.shape), atol=1e-8)
    cont = continuation(model, x, "tau_r", [1.0, 2.0, 4.0])
    np.testing.assert_allclose(cont.max_real.numpy().max(-1), [-1.0, -0.5, -0.25], atol=1e-8)


def test_fixed_point_cost_uses_each_variable_time_constant():
    """The default relaxation steps each variable by its own time constant: a fast and a
    slow compartment cost as little as equal ones (Picard map y + T F(y))."""
    x = _x(8)
    costs = [fixed_point(TwoCompartment([4, 5, 3], tau_v=tv, tau_r=tr), x,
                         method="anderson").nfev for tv, tr in ((1.0, 1.0), (0.01, 5.0))]
    assert costs[1] <= 2 * costs[0], costs


@pytest.mark.parametrize("mode", ["quasi_static", "coupled"])
def test_present_moves_the_top_weights_toward_the_target(mode):
    model, x = TwoCompartment([4, 5, 3], eta=0.05), _x(16)
    y = torch.full((16, 3), 0.5, dtype=F64)
    schedule = model.default_schedule()
    before = float(((model.forward(model.params, x) - y) ** 2).sum())
    pres = present(model, x, y, schedule, mode=mode)
    after = float(((model.forward(pres.params, x) - y) ** 2).sum())
    assert after < before
    assert set(pres.params) == {"A"}
    if mode == "coupled":   # the hidden layers learn only from the transient from the zero
        # state, which the quasi-static step takes to first order (issue 13; measured 18 and
        # 16 % from coupled, nonlinear remainder) and the plain step leaves out
        quasi = present(model, x, y, schedule, mode="quasi_static")
        for a, b, a0 in zip(pres.params["A"], quasi.params["A"], model.params["A"]):
            assert float((a - b).norm()) < 0.3 * float((a - a0).norm())
        plain = present(model, x, y, schedule, mode="quasi_static", transient=False)
        torch.testing.assert_close(plain.params["A"][0], model.params["A"][0])


def test_train_with_backprop_baseline_and_diagnostics(tmp_path):
    gen = np.random.default_rng(0)
    xs = gen.normal(size=(96, 4))
    ys = (xs[:, 0] > 0).astype(np.int64)
    data = Dataset(xs[:64], ys[:64], xs[64:], ys[64:], 2, "classification", "toy", "sign")
    model = TwoCompartment([4, 6, 2])
    learner = DendriticLearner(model, loss="mse", eta_hat=0.5)
    base = BackpropLearner(model, lr=0.5, loss="mse")
    hist = train(learner, data, epochs=2, batch_size=16, progress=False, out_dir=tmp_path / "d")
    bp = train(base, data, epochs=2, batch_size=16, progress=False)
    assert hist.test_loss[-1] < hist.test_loss[0] and bp.test_loss[-1] < bp.test_loss[0]
    values = layer_diagnostics(learner, torch.as_tensor(xs[:8]), torch.as_tensor(ys[:8]))
    assert np.isfinite(values["cos_bp"][-1]) and values["cos_bp"][-1] > 0.5
    assert np.isnan(values["cos_gn"]).all()         # no layered s(W h + b) forward map
    assert np.isfinite(values["max_real_eig"]) and values["max_real_eig"] < 0


ENGINE = pathlib.Path(dendrite_sim.__file__).parent
MODEL_NAMES = {"model"}


def _model_reads(tree):
    """``(attribute, line)`` of every ``model.<attr>`` / ``self.model.<attr>`` read and every
    ``getattr``/``hasattr`` on a model with a literal name."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            owner = node.value
            name = owner.id if isinstance(owner, ast.Name) else \
                owner.attr if isinstance(owner, ast.Attribute) else None
            if name in MODEL_NAMES:
                yield node.attr, node.lineno
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id in ("getattr", "hasattr") and len(node.args) >= 2:
            target, attr = node.args[0], node.args[1]
            owner = target.id if isinstance(target, ast.Name) else \
                target.attr if isinstance(target, ast.Attribute) else None
            if owner in MODEL_NAMES and isinstance(attr, ast.Constant):
                yield attr.value, node.lineno


def test_engine_reads_models_only_through_the_contract():
    """Outside the model files and the family bases (which are models), the engine reads no
    model attribute that ``NetworkModel`` does not declare."""
    own = {"families", "models"}
    offenders = []
    for path in ENGINE.rglob("*.py"):
        if own & set(path.relative_to(ENGINE).parts):
            continue
        for attr, line in _model_reads(ast.parse(path.read_text())):
            if attr not in CONTRACT and not attr.startswith("__"):
                offenders.append(f"{path.relative_to(ENGINE)}:{line} .{attr}")
    assert not offenders, offenders


def test_every_cli_command_runs_the_model(tmp_path, monkeypatch, capsys):
    """``run`` (with the backprop baseline), ``simulate``, ``analyze`` with a sweep, ``plot`` and
    ``compare`` on a model registered from outside the package's models folder."""
    from dendrite_sim.frontend import config
    from dendrite_sim.frontend.cli import main
    monkeypatch.setitem(config.model_registry(), "two_compartment", TwoCompartment)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tc.toml").write_text(
        '[model]\nname = "two_compartment"\nsizes = [64, 6, 10]\n'
        '[data]\nname = "digits"\nmax_train = 64\nmax_test = 32\n'
        '[training]\nepochs = 1\nbatch_size = 32\nloss = "mse"\neta_hat = 0.5\n'
        'backprop_lr = 0.5\n[output]\nexamples = 2\npoints = 50\n')
    commands = [["run", "tc.toml", "--quiet", "--out", "run"],
                ["simulate", "run", "--out", "sim"],
                ["analyze", "run", "--out", "an", "--sweep", "tau_r", "--values", "1:3:3"],
                ["plot", "run"], ["compare", "run", "sim"]]
    for argv in commands:
        assert main(argv) == 0, argv
    out = capsys.readouterr().out
    assert "dendritic" in out and "backprop" in out
    assert "max real part: from -1 to -0.333333" in out            # -1/tau_r along the sweep
    for figure in ("run/figures/learning_curves_vs_backprop.png", "run/figures/spectrum.png",
                   "sim/activity.png", "an/continuation_tau_r.png"):
        assert (tmp_path / figure).stat().st_size > 1000, figure


def test_verbs_never_modify_the_state_they_are_given():
    """``y0`` passed to ``fixed_point`` and ``simulate`` is the user's: a warm start from an
    earlier equilibrium must leave that equilibrium as it was."""
    from dendrite_sim.models import Mixture
    model = Mixture([4, 4, 4, 4], mu=0.1, feedback="exact", transfer="leaky_relu", slope=0.5,
                    dtype=F64, seed=3)
    x, target = _x(8), _x(8, seed=1)
    free = fixed_point(model, x)
    before = free.y.clone()
    fixed_point(model, x, target, y0=free.y)
    simulate(model, x, [0.0, 1.0], target, y0=free.y)
    torch.testing.assert_close(free.y, before, rtol=0, atol=0)


def test_two_phase_fixed_point_cost_does_not_grow_with_a_fast_trace():
    """``TwoPhaseDTP([64, 64, 10], trace_tau=0.1)``: at most twice the evaluations of
    ``trace_tau=1`` (the relaxation steps the trace by its own time constant). The solve
    alone (``basin="any"``, as in training): the default's basin check follows the flow of
    the examples Anderson accelerated, which the fast trace makes stiff (docs/report.md)."""
    from dendrite_sim.models import TwoPhaseDTP
    x = torch.randn(32, 64, generator=torch.Generator().manual_seed(0))
    cost = {tt: fixed_point(TwoPhaseDTP([64, 64, 10], trace_tau=tt), x, method="anderson",
                            basin="any").nfev
            for tt in (1.0, 0.1)}
    assert cost[0.1] <= 2 * cost[1.0], cost


class _Jumping(TwoCompartment):
    """The test model with a sample-and-hold: at every gate switch ``v`` drops by 0.1."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.jumps = []

    def jump(self, t, y, drive, prepared):
        self.jumps.append(float(t))
        v = self.layout.variable_slice("v")
        out = y.clone()
        out[:, v] -= 0.1
        return out


@pytest.mark.parametrize("mode", ["quasi_static", "coupled"])
def test_a_waveform_gate_equals_the_phases_it_switches_between(mode):
    """A phase whose ``input_gain`` gate is a square waveform (1 for 6, then 0.5 for 10)
    presents the same as two phases with those constant gates, in both modes; the model's
    ``jump`` runs at the switch either way."""
    from dendrite_sim.dynamics.gates import Waveform
    from dendrite_sim.learning import Phase, Schedule
    x, y = _x(6), torch.full((6, 3), 0.5, dtype=F64)
    square = Waveform(lambda s: 1.0 if s < 6.0 else 0.5, breakpoints=(6.0,), name="square")
    waved = Schedule([Phase("p", 16.0, teach=True, plastic=("A",),
                            extra_gates={"input_gain": square})])
    two = Schedule([Phase("on", 6.0, teach=True, plastic=("A",),
                          extra_gates={"input_gain": 1.0}),
                    Phase("off", 10.0, teach=True, plastic=("A",),
                          extra_gates={"input_gain": 0.5})])
    model_a, model_b = _Jumping([4, 5, 3], eta=0.05), _Jumping([4, 5, 3], eta=0.05)
    kw = dict(gate_samples=1) if mode == "quasi_static" else dict(rtol=1e-9, atol=1e-11)
    got = present(model_a, x, y, waved, mode=mode, **kw)
    want = present(model_b, x, y, two, mode=mode, **kw)
    assert got.params["A"][-1] is not model_a.params["A"][-1]
    for a, b in zip(got.params["A"], want.params["A"]):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-10)
    assert 6.0 in model_a.jumps and 6.0 in model_b.jumps
