"""Property-based fuzz of the public API (hypothesis, derandomized, fixed example budgets).

Property, for every entry point: given hostile inputs (empty batches, zero-width layers,
NaN/inf, huge values, wrong dtypes and devices, numpy arrays, integer tensors, reversed time
grids, unknown names) the call either returns a valid result (finite where it claims
convergence, the documented shapes) or raises ``ValueError``, ``TypeError`` or
``dendrite_sim.errors.NumericalError`` — never an internal failure (a ``RuntimeError`` from
torch, an ``IndexError``, a ``KeyError``, a crash). Every case is a tiny network so the whole
file runs in well under a minute on one core.
"""
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dendrite_sim as ds
from dendrite_sim.errors import NumericalError
from dendrite_sim.frontend.data import load_dataset
from dendrite_sim.learning.presentation import present
from dendrite_sim.models import Mixture, TwoPhaseDTP

F64 = torch.float64
ALLOWED = (ValueError, TypeError, NumericalError)


def fuzz(n):
    """``n`` derandomized examples, no deadline (a shared machine)."""
    return settings(max_examples=n, derandomize=True, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))


def outcome(call):
    """``(result, None)`` or ``(None, error)`` for an allowed error; anything else propagates
    and fails the test. An allowed error must say what is wrong (a non-empty message)."""
    try:
        return call(), None
    except ALLOWED as err:
        assert str(err).strip(), f"{type(err).__name__} without a message"
        return None, err


# -- hostile values ----------------------------------------------------------------------------
NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-3, 3),
    st.sampled_from(["0.2", "1", None, True, False, [0.1], np.float64(0.2), 2 ** 70, 1e308,
                     -1e-300, complex(0.1, 0)]))
DTYPES = st.sampled_from([torch.float64, torch.float32, torch.int64, torch.float16, torch.bool,
                          "float64", None, np.float64])
DEVICES = st.sampled_from(["cpu", torch.device("cpu"), "meta", "junk", None, "cuda:7", 0])
SIZES = st.one_of(
    st.lists(st.integers(-1, 4), min_size=0, max_size=4),
    st.sampled_from(["33", [3.5, 2], [2.0, 2.0], (2, 2), [True, 2], np.array([2, 2]), 3,
                     [np.int64(2), 2]]))
FILLS = st.sampled_from([0.1, -0.3, 0.0, math.nan, math.inf, -math.inf, 1e300, -1e300, 1e6])


@st.composite
def tensors(draw, width, batch=None):
    """A would-be ``(B, width)`` input: mostly right, sometimes wrong in one respect."""
    rows = draw(st.sampled_from([1, 2, 0])) if batch is None else batch
    shape = draw(st.sampled_from([(rows, width)] * 4 + [(width,), (rows, width + 1), (rows, 0),
                                                        (rows, width, 1), ()]))
    dtype = draw(st.sampled_from([F64] * 4 + [torch.float32, torch.int64, torch.bool]))
    base = torch.full(shape, 0.1, dtype=F64)
    if base.numel():
        base.view(-1)[draw(st.integers(0, base.numel() - 1))] = draw(FILLS)
    value = base.to(dtype)
    kind = draw(st.sampled_from(["tensor"] * 6 + ["numpy", "list"]))
    return value if kind == "tensor" else value.numpy() if kind == "numpy" else value.tolist()


def model(transfer="leaky_relu", feedback="exact", sizes=(2, 2, 2)):
    return Mixture(list(sizes), mu=0.2, transfer=transfer, feedback=feedback, dtype=F64)


MODELS = st.sampled_from([("leaky_relu", "exact"), ("tanh", "exact"), ("sigmoid", "learned"),
                          ("identity", "learned")]).map(lambda spec: model(*spec))


WELL_FORMED = ["none", "same", "nan", "singular", "huge"]
MALFORMED = ["shape", "dtype", "missing", "layers", "not_dict", "numpy"]


@st.composite
def params_for(draw, m, kinds=WELL_FORMED + MALFORMED):
    """``None`` (the model's), the model's own, or a copy broken in one way: numerically
    (``WELL_FORMED``: NaN, singular, huge weights) or in its structure (``MALFORMED``)."""
    kind = draw(st.sampled_from(kinds))
    if kind == "none":
        return None
    p = {k: [None if v is None else v.clone() for v in vs] for k, vs in m.params.items()}
    w = p["W"]
    if kind == "nan":
        w[0][0, 0] = math.nan
    elif kind == "shape":
        w[0] = torch.zeros(w[0].shape[0] + 1, w[0].shape[1], dtype=F64)
    elif kind == "dtype":
        w[0] = w[0].float()
    elif kind == "missing":
        del p["W"]
    elif kind == "layers":
        p["W"] = w[:1]
    elif kind == "not_dict":
        return list(p.values())
    elif kind == "numpy":
        w[0] = w[0].numpy()
    elif kind == "singular":
        w[0] = torch.zeros_like(w[0])
    elif kind == "huge":
        w[0] = w[0] * 1e150
    return p


GATES = st.sampled_from([None, {"teach": 0.0}, {"teach": 1.0, "plastic_W": 0.0},
                         {"teach": math.nan}, {"teach": "on"}, {1: 0.0},
                         lambda t: {"teach": 1.0}, lambda t: None, "teach", 3])


def state_ok(y, batch, width):
    assert isinstance(y, torch.Tensor) and tuple(y.shape) == (batch, width)


# -- constructors ------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [Mixture, TwoPhaseDTP])
@fuzz(60)
@given(data=st.data())
def test_constructors(cls, data):
    kwargs = {"sizes": data.draw(st.one_of(st.just([2, 2, 2]), SIZES))}
    for name, values in [("mu", NUMBERS), ("tau", NUMBERS), ("eta_inv", NUMBERS),
                         ("feedback_gain", NUMBERS), ("dtype", DTYPES), ("device", DEVICES),
                         ("seed", st.one_of(st.integers(-2, 2 ** 64), NUMBERS)),
                         ("bias", st.sampled_from([True, False, "no", 0, None])),
                         ("feedback", st.sampled_from(["exact", "learned", "nope", None])),
                         ("transfer", st.sampled_from(["tanh", "sigmoid", "relu", None, 1]))]:
        if data.draw(st.booleans()):
            kwargs[name] = data.draw(values)
    m, err = outcome(lambda: cls(**kwargs))
    if err is not None:
        return
    assert m.dtype in (torch.float32, torch.float64) and m.device.type == "cpu"
    assert all(isinstance(n, int) and n >= 1 for n in m.sizes) and len(m.sizes) >= 2
    assert 0 < m.mu < 0.5 and m.tau > 0 and m.eta_inv >= 0
    assert isinstance(m.feedback_gain, float) and math.isfinite(m.feedback_gain)
    for name, layers in m.params.items():
        for p in layers:
            assert p is None or (p.dtype == m.dtype and bool(torch.isfinite(p).all()))
    for i, w in enumerate(m.params["W"]):
        assert tuple(w.shape) == (m.sizes[i + 1], m.sizes[i])


# -- the verbs ---------------------------------------------------------------------------------
TARGETS = st.sampled_from(["none", "clamp", "nudge", "labels", "bool", "numpy", "wrong_batch"])


def make_target(kind, m, batch):
    n = m.sizes[-1]
    return {"none": None, "clamp": torch.full((batch, n), 0.2, dtype=F64),
            "nudge": ds.Nudge(torch.full((batch, n), 0.2, dtype=F64), eta_hat=0.5),
            "labels": ds.Nudge(torch.zeros(batch, dtype=torch.int32), loss="cross_entropy"),
            "bool": ds.Nudge(torch.zeros(batch, dtype=torch.bool), loss="cross_entropy"),
            "numpy": np.zeros((batch, n)),
            "wrong_batch": torch.zeros(batch + 1, n, dtype=F64)}[kind]


@fuzz(40)
@given(m=MODELS, data=st.data())
def test_fixed_point(m, data):
    x = data.draw(tensors(m.sizes[0]))
    target = make_target(data.draw(TARGETS), m, 2)
    params, gates = data.draw(params_for(m, WELL_FORMED)), data.draw(GATES)
    eq, err = outcome(lambda: ds.fixed_point(m, x, target, params=params, gates=gates,
                                             max_iter=30))
    if err is None:
        state_ok(eq.y, x.shape[0] if x.dim() == 2 else 1, m.state_size)
        assert bool(torch.isfinite(eq.y[eq.converged]).all())


@fuzz(30)
@given(m=MODELS, data=st.data())
def test_simulate(m, data):
    x = data.draw(tensors(m.sizes[0]))
    t = data.draw(st.sampled_from([
        torch.linspace(0, 1, 3, dtype=F64), torch.linspace(1, 0, 3, dtype=F64),
        torch.tensor([0.0, math.nan, 1.0], dtype=F64), torch.tensor([0.0, 0.0, 1.0], dtype=F64),
        torch.tensor([0.0], dtype=F64), [0.0, 0.5], np.array([0.0, 1.0]), 1.0, "0,1",
        torch.tensor([0, 1]), torch.tensor([0.0, math.inf], dtype=F64)]))
    max_abs = data.draw(st.sampled_from([1e6, math.nan, -1.0, 0.0, math.inf, "big"]))
    params, gates = data.draw(params_for(m, WELL_FORMED)), data.draw(GATES)
    traj, err = outcome(lambda: ds.simulate(m, x, t, params=params, gates=gates,
                                            max_abs=max_abs, method="rk4",
                                            step_size=0.25))
    if err is None:
        assert traj.y.dim() == 3 and traj.y.shape[2] == m.state_size
        assert traj.y.shape[0] == len(t) and bool(torch.isfinite(traj.y).all())


def hostile_state(draw, m):
    fill = draw(FILLS)
    kind = draw(st.sampled_from(["tensor", "tensor", "outside", "wrong_width", "numpy"]))
    y = torch.full((2, m.state_size), fill, dtype=F64)
    if kind == "outside":
        y.fill_(2.0)            # outside tanh's and sigmoid's inverse domains
    return {"wrong_width": y[:, 1:], "numpy": y.numpy()}.get(kind, y)


@fuzz(30)
@given(m=MODELS, data=st.data())
def test_jacobian_and_spectrum(m, data):
    x = data.draw(tensors(m.sizes[0], batch=2))
    y = hostile_state(data.draw, m)
    params = data.draw(params_for(m))
    jac, err = outcome(lambda: ds.jacobian(m, x, y, params=params))
    if err is None:
        assert tuple(jac.shape) == (2, m.state_size, m.state_size)
        assert bool(torch.isfinite(torch.Tensor(jac)).all())
    spec, err = outcome(lambda: ds.spectrum(m, x, y, params=params))
    if err is None:
        assert tuple(spec.eigenvalues.shape) == (2, m.state_size)
        assert bool(torch.isfinite(spec.eigenvalues).all())


def _returns_none(model, value):
    return None


def _other_sizes(model, value):
    return Mixture([3, 3, 3], mu=0.2, dtype=F64)


@fuzz(20)
@given(m=MODELS, data=st.data())
def test_continuation(m, data):
    x = torch.full((1, m.sizes[0]), 0.1, dtype=F64)
    parameter = data.draw(st.sampled_from(["mu", "tau", "feedback_gain", "nope", "sizes", 3,
                                           None, _returns_none, _other_sizes,
                                           lambda mm, v: mm.replace(mu=v)]))
    values = data.draw(st.sampled_from([[0.1, 0.2], [0.3, 0.1], [0.1, math.nan], [0.1],
                                        [0.1, 0.6], ["a", "b"], [[0.1], [0.2]], [], 0.1]))
    params = data.draw(params_for(m))
    out, err = outcome(lambda: ds.continuation(m, x, parameter, values, params=params,
                                               max_iter=30))
    if err is None:
        V, N = len(values), m.state_size
        assert tuple(out.states.shape) == (V, 1, N) and tuple(out.eigenvalues.shape) == (V, 1, N)
        ok = out.converged
        assert bool(torch.isfinite(out.states[ok]).all())
        assert bool(torch.isfinite(out.eigenvalues[ok]).all())


@fuzz(15)
@given(data=st.data())
def test_present(data):
    m = model("leaky_relu", "learned")
    x = data.draw(tensors(m.sizes[0], batch=2))
    target = make_target(data.draw(TARGETS), m, 2)
    params = data.draw(params_for(m, WELL_FORMED))
    mode = data.draw(st.sampled_from(["quasi_static", "coupled", "nope"]))
    out, err = outcome(lambda: present(m, x, target, m.default_schedule(T=0.5), mode=mode,
                                       params=params, max_iter=20))
    if err is None:
        for name, layers in out.params.items():
            for p, own in zip(layers, m.params[name]):
                assert (p is None) == (own is None)
                assert p is None or (p.shape == own.shape and bool(torch.isfinite(p).all()))


@fuzz(12)
@given(data=st.data())
def test_load_dataset(data):
    name = data.draw(st.sampled_from(["teacher_student", "mnist1d", "nope", 3]))
    # n_train = 1 for mnist1d is a known failure outside this file's reach (test below)
    n_train = data.draw(st.sampled_from([2, 8, 0, -1, "3", 2.5]))
    kwargs = {"n_train": n_train, "n_test": 2}
    if name == "teacher_student":
        kwargs.update(n_in=2, n_hidden=(2,), n_out=2)
    out, err = outcome(lambda: load_dataset(name, **kwargs))
    if err is None:
        assert len(out.x_train) == n_train and len(out.x_test) == 2
        assert np.isfinite(out.x_train).all() and np.isfinite(out.x_test).all()


def _verb(name):
    x = torch.full((1, 2), 0.1, dtype=F64)
    m = model("leaky_relu", "learned")
    return {"fixed_point": lambda p: ds.fixed_point(m, x, params=p),
            "simulate": lambda p: ds.simulate(m, x, [0.0, 0.5], params=p),
            "present": lambda p: present(m, x, None, m.default_schedule(T=0.5), params=p),
            "jacobian": lambda p: ds.jacobian(m, x, torch.zeros(1, 4, dtype=F64), params=p),
            "continuation": lambda p: ds.continuation(m, x, "mu", [0.1, 0.2], params=p)}[name]


WRONG_SHAPE = {"W": [torch.zeros(3, 2, dtype=F64), torch.zeros(2, 2, dtype=F64)],
               "b": [None, None], "Q": [torch.zeros(2, 2, dtype=F64)]}


@pytest.mark.parametrize("verb", ["jacobian", "continuation", "simulate", "present",
                                  "fixed_point"])
def test_verbs_validate_params(verb):
    with pytest.raises(ValueError, match=r"params\['W'\]\[0\] must have shape \(2, 2\)"):
        _verb(verb)(WRONG_SHAPE)


def test_mnist1d_single_training_example_is_finite_or_refused():
    out, err = outcome(lambda: load_dataset("mnist1d", n_train=1, n_test=2))
    assert err is not None or np.isfinite(out.x_train).all()


# -- the crash that started this: LAPACK on a non-finite Jacobian ------------------------------
def test_spectrum_outside_inverse_domain_is_a_clear_error_never_a_signal():
    """The sigmoid network at a state outside (0, 1): the Jacobian has NaN entries, and
    ``torch.linalg.eigvals`` on them can kill the process (oneMKL DGEBAL). Every run must end
    with NumericalError naming the inverse domain, exit code 0, no signal."""
    script = textwrap.dedent("""
        import torch
        from dendrite_sim import spectrum
        from dendrite_sim.errors import NumericalError
        from dendrite_sim.models import Mixture
        m = Mixture([3, 3, 3], mu=0.2, transfer="sigmoid", dtype=torch.float64)
        x = torch.full((2, 3), 0.1, dtype=torch.float64)
        for _ in range(REPEATS):
            try:
                spectrum(m, x, torch.full((2, 6), 2.0, dtype=torch.float64))
            except NumericalError as err:
                assert "inverse domain" in str(err), err
            else:
                raise SystemExit("no error")
        print("clean")
    """).replace("REPEATS", "20")
    # one process with 20 tries keeps this fast; 20 separate processes were not run here
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, (run.returncode, run.stderr[-2000:])
    assert run.stdout.strip() == "clean"


# -- training: any learner, hostile data and settings ------------------------------------------
@st.composite
def datasets(draw):
    """A would-be training set for a 2-2-2 network: mostly right, sometimes wrong."""
    from dendrite_sim.frontend.data import Dataset
    n = draw(st.sampled_from([4, 4, 4, 1, 0]))
    x = np.full((n, draw(st.sampled_from([2, 2, 3]))), 0.1)
    if n and draw(st.booleans()):
        x[0, 0] = draw(FILLS)
    task = draw(st.sampled_from(["classification", "regression"]))
    y = np.arange(n) % 2 if task == "classification" else np.full((n, 2), 0.2)
    kind = draw(st.sampled_from(["dataset"] * 4 + ["tuple", "lists", "name"]))
    if kind == "name":
        return draw(st.sampled_from(["nope", "teacher_student"]))
    if kind == "tuple":
        return (x, y)
    if kind == "lists":
        return (x.tolist(), y.tolist())
    try:
        return Dataset(x, y, x, y, 2 if task == "classification" else None, task, "fuzz", "")
    except ALLOWED:
        return (x, y)


@fuzz(40)
@given(data=st.data())
def test_train(data, tmp_path_factory):
    from dendrite_sim.learning import train
    from dendrite_sim.learning.learners import learner_class, learner_names
    name = data.draw(st.sampled_from(learner_names()))
    m = TwoPhaseDTP([2, 2, 2], mu=0.2, feedback="learned", dtype=F64)

    def build():
        cls = learner_class(name)
        return cls(m) if name == "dendritic" else cls(m, loss="mse")

    learner, err = outcome(build)
    if err is not None:
        return
    dataset = data.draw(datasets())
    epochs = data.draw(st.sampled_from([1, 1, 0, -1, "1", 1.5]))
    batch = data.draw(st.sampled_from([2, 2, 0, "2", 10 ** 9]))
    out_dir = data.draw(st.sampled_from([None, "dir", "file"]))
    if out_dir is not None:
        root = tmp_path_factory.mktemp("run")
        if out_dir == "file":
            (root / "file").write_text("not a directory")
        out_dir = root / out_dir
    hist, err = outcome(lambda: train(learner, dataset, epochs=epochs, batch_size=batch,
                                      progress=False, out_dir=out_dir, n_eig=0))
    if err is None:
        assert len(hist.examples) >= 1 and np.isfinite(hist.train_loss[0])


# -- the configuration loader and every CLI command ------------------------------------------
KEYS = st.sampled_from(["model.mu", "model.sizes", "model.transfer", "model.dtype",
                        "training.epochs", "training.batch_size", "training.eta_hat",
                        "training.baselines", "solver.method", "solver.max_seconds",
                        "data.name", "data.max_train", "schedule.T_free", "learner.mode",
                        "learner.on_unconverged", "output.dpi", "nosection.key", "model",
                        "model.", ".mu", "model.mu.x"])
VALUES = st.sampled_from(["0.2", "-1", "nan", "inf", "1e400", '"a\\u007fb"', "[1, 2]",
                          "[64, 8, 10]", "true", "abc", '""', "{a = 1}", "2.5", "0",
                          "99999999999999999999", "[", '"tanh"', '["backprop"]'])


@fuzz(40)
@given(key=KEYS, value=VALUES)
def test_config_overrides(key, value):
    """Every ``--set KEY=VALUE`` either gives a valid configuration whose TOML text reads back
    to itself, or a ``ConfigError`` naming the key."""
    import tomllib
    from dendrite_sim.frontend.config import dumps_toml, load_config, validate_config
    cfg, err = outcome(lambda: load_config("two_phase", [f"{key}={value}"]))
    if err is None:
        assert validate_config(tomllib.loads(dumps_toml(cfg))) == cfg


ARGV = st.sampled_from([
    ["config", "two_phase", "--set"], ["config", "nope"], ["config", "/no/such.toml"],
    ["models"], ["compare"], ["compare", "/no/such/run"], ["plot", "/no/such/run"],
    ["analyze", "two_phase", "--sweep", "mu"], ["analyze", "two_phase", "--values", "1:2:3"],
    ["analyze", "two_phase", "--sweep", "nope", "--values", "0.1,0.2"],
    ["analyze", "two_phase", "--sweep", "mu", "--values", "0.1:0.9:3"],
    ["simulate", "two_phase", "--set", "model.sizes=[64,0,10]"],
    ["simulate", "two_phase", "--set", "solver.method=nope"],
    ["run", "two_phase", "--resume"], ["run", "/no/such/run", "--resume"],
    ["run", "two_phase", "--resume", "--overwrite"], ["run", "two_phase", "--set", "x"],
    ["sweep", "two_phase", "--grid", "model.mu"], ["sweep", "two_phase", "--seeds", "-1"],
    ["sweep", "two_phase", "--grid", "nope.key=1,2"], ["frobnicate"], []])


@fuzz(40)
@given(argv=ARGV)
def test_cli_commands(argv, tmp_path_factory, capsys, monkeypatch):
    """Every command with hostile arguments exits 0, or 2 with one line on stderr (argparse
    usage errors included), never a traceback."""
    from dendrite_sim.cli import main
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
    try:
        code = main(list(argv))
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    assert code in (0, 2), (argv, code, err)
    assert "Traceback" not in err
    if code == 2:
        assert err.strip(), argv
