"""The training loop: seeded mini-batches, evaluations, diagnostics and resumable runs."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from dendrite_sim.errors import NumericalError, check_range
from .diagnostics import layer_diagnostics
from .files import atomic_write, remove_temporaries
from .history import History, _empty_records, _write_json
from .learners.dendritic import DendriticLearner
from .optimizers import SGD, make_update_rule


FILES = ("trajectory.npz", "summary.json", "checkpoint.pt")

# ============================================================================================
# the training loop
# ============================================================================================
class _Progress:
    """A one-line progress bar on stderr (no dependency). Where stderr is not a terminal (a
    log file, a pipe) it writes a plain line at every tenth of the way instead of redrawing."""

    def __init__(self, enabled: bool, total: int, width: int = 24):
        self.enabled, self.total, self.width = enabled, max(total, 1), width
        self.start = time.perf_counter()
        self.terminal = sys.stderr.isatty()
        self.logged = -1                     # the last tenth written (not a terminal)

    def update(self, done: int, note: str = ""):
        if not self.enabled:
            return
        frac = min(done / self.total, 1.0)
        tenth = int(10 * frac)
        if not self.terminal and tenth == self.logged:
            return
        filled = int(round(frac * self.width))
        elapsed = time.perf_counter() - self.start
        bar = "#" * filled + "." * (self.width - filled)
        line = f"[{bar}] {done}/{self.total} {elapsed:6.1f}s {note}"
        sys.stderr.write(f"\r{line}   " if self.terminal else f"{line}\n")
        sys.stderr.flush()
        self.logged = tenth

    def close(self):
        if self.enabled and self.terminal:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _check_int(name, value, low=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}; got {value!r}")
    return int(value)


def _as_dataset(data):
    from dendrite_sim.frontend.data import Dataset, load_dataset
    if isinstance(data, str):
        return load_dataset(data)
    if not isinstance(data, Dataset):
        raise ValueError("data must be a dendrite_sim.frontend.data.Dataset or a data set name for "
                         f"load_dataset; got {type(data).__name__}")
    return data


def _check_data(data, learner):
    n_in, n_out = learner.sizes[0], learner.sizes[-1]
    if len(data.x_train) == 0:
        raise ValueError("data has no training examples (empty x_train)")
    for split in ("train", "test"):
        x = getattr(data, f"x_{split}")
        if len(x) and (x.ndim != 2 or x.shape[1] != n_in):
            raise ValueError(f"data: x_{split} has shape {x.shape} but the model input width "
                             f"is {n_in}")
        if len(x) and not np.isfinite(x).all():
            raise ValueError(f"data: x_{split} contains NaN or inf")
        y = getattr(data, f"y_{split}")
        if data.task == "classification":
            if len(y) and (int(y.min()) < 0 or int(y.max()) >= n_out):
                raise ValueError(f"data: y_{split} labels must lie in [0, {n_out - 1}] (the "
                                 f"model has {n_out} outputs); got [{int(y.min())}, "
                                 f"{int(y.max())}]")
        elif len(y) and (y.ndim != 2 or y.shape[1] != n_out):
            raise ValueError(f"data: y_{split} has shape {y.shape} but the model output width "
                             f"is {n_out}")
    if data.task == "regression" and learner.loss_name != "mse":
        raise ValueError(f"loss {learner.loss_name!r} needs class labels; data "
                         f"{data.name!r} is a regression task (use loss='mse')")


def train(learner, data, *, epochs, batch_size=32, eval_every=1, seed=0, out_dir=None,
          resume=False, progress=True, diagnostics_every=None, max_eval=None, probe_size=None,
          n_eig=4, overwrite=False, lr_decay=1.0, optimizer=None) -> History:
    """Train ``learner`` on ``data`` with seeded shuffled mini-batches; return the History.

    Parameters
    ----------
    learner : a learner (:class:`DendriticLearner`, :class:`BackpropLearner`) or a network
        model (wrapped in ``DendriticLearner(model)``, which needs ``default_schedule``).
    data : a :class:`dendrite_sim.frontend.data.Dataset`, or a name for ``load_dataset``.
    epochs : total number of epochs (with ``resume``, the total including those done).
    batch_size : mini-batch size (the last batch of an epoch may be smaller).
    eval_every : evaluation interval in epochs (fractions allowed: rounded to whole batches,
        at least one); the initial weights and the end of training are always evaluated.
    seed : seeds the shuffling, the probe batch and the evaluation subsets.
    out_dir : if given, ``trajectory.npz``, ``summary.json`` and ``checkpoint.pt`` are written
        there (atomically) at every evaluation.
    resume : continue from ``out_dir/checkpoint.pt`` (same configuration required); with no
        files in ``out_dir`` the run starts from scratch.
    progress : a progress line on stderr.
    diagnostics_every : sample the diagnostics every this many batches (default: at every
        evaluation); ``0`` disables them.
    max_eval : evaluate train and test metrics on at most this many examples each (a fixed
        seeded subset of the training set, the first ``max_eval`` test examples).
    probe_size : size of the fixed probe batch of training examples (default ``batch_size``).
    n_eig : examples of the probe batch whose spectrum is computed (0: none).
    overwrite : allow a fresh run (``resume=False``) to replace the files of an earlier run in
        ``out_dir``; otherwise that raises ``FileExistsError``.
    lr_decay : in (0, 1]; the updates of epoch ``k`` (from 0) are scaled by ``lr_decay**k``
        (``Learner.step(..., scale=)``): an exponential step-size schedule, the same for every
        learner, that depends on the epoch only (so an extended run continues it). With
        ``lr_decay < 1`` the learner's ``step`` must accept ``scale`` (``Learner.step`` does).
    optimizer : the update rule that turns each proposed change into the step taken:
        ``None`` or ``"sgd"`` (as proposed), ``"momentum"``, ``"adam"`` (with their default
        settings) or an :class:`~dendrite_sim.learning.optimizers.UpdateRule` instance such as
        ``Adam(lr=1e-3)``; its state is checkpointed with the learner.
    """
    if not hasattr(learner, "step"):
        learner = DendriticLearner(learner)
    data = _as_dataset(data)
    epochs = _check_int("epochs", epochs)
    batch_size = _check_int("batch_size", batch_size)
    eval_every = check_range("eval_every", eval_every, low=0.0, low_open=True)
    seed = _check_int("seed", seed, low=0)
    if max_eval is not None:
        max_eval = _check_int("max_eval", max_eval)
    n_eig = _check_int("n_eig", n_eig, low=0)
    lr_decay = check_range("lr_decay", lr_decay, low=0.0, low_open=True, high=1.0)
    rule = make_update_rule(optimizer)
    rule = None if isinstance(rule, SGD) else rule
    _check_data(data, learner)

    x_tr, y_tr, x_te, y_te = data.tensors(dtype=learner.dtype, device=learner.device)
    n = x_tr.shape[0]
    per_epoch = -(-n // batch_size)
    total = epochs * per_epoch
    eval_steps = max(1, int(round(eval_every * per_epoch)))
    if diagnostics_every is None:
        diag_steps = eval_steps
    else:
        diag_steps = _check_int("diagnostics_every", diagnostics_every, low=0)
    probe_size = batch_size if probe_size is None else _check_int("probe_size", probe_size)

    # fixed subsets from a generator separate from the shuffling stream
    sub = torch.Generator().manual_seed(seed + 7919)
    probe = torch.randperm(n, generator=sub)[:probe_size]
    train_eval = torch.randperm(n, generator=sub)[:max_eval] if max_eval else torch.arange(n)
    test_eval = slice(0, max_eval) if max_eval else slice(None)
    xe_tr, ye_tr = x_tr[train_eval], y_tr[train_eval]
    xe_te, ye_te = x_te[test_eval], y_te[test_eval]
    xp, yp = x_tr[probe], y_tr[probe]

    config = {"learner": learner.config(), "data": data.name, "n_train": n,
              "n_test": int(x_te.shape[0]), "batch_size": batch_size, "seed": seed,
              "eval_every_batches": eval_steps, "diagnostics_every": diag_steps,
              "max_eval": max_eval, "probe_size": probe_size, "n_eig": n_eig,
              "dtype": str(learner.dtype)}
    if lr_decay != 1.0:
        config["lr_decay"] = lr_decay
    if rule is not None:
        config["optimizer"] = rule.config()
    depth = len(learner.sizes) - 1

    out = None if out_dir is None else Path(out_dir)
    if out is not None and out.exists() and not out.is_dir():
        raise ValueError(f"out_dir {str(out)!r} exists and is not a directory; give a "
                         "directory (created when missing)")
    ckpt_path = None if out is None else out / "checkpoint.pt"
    gen = torch.Generator().manual_seed(seed)
    state = {"step": 0, "epoch": 0, "pos": 0, "perm": None, "examples": 0, "sim_time": 0.0,
             "wall_time": 0.0, "step_wall_time": 0.0, "records": _empty_records()}
    resumed = False
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        existing = [f for f in FILES if (out / f).exists()]
        if resume and ckpt_path.exists():
            ckpt = _load_checkpoint(ckpt_path)
            _check_resume_config(ckpt["config"], config)
            learner.load_state_dict(ckpt["learner"])
            if rule is not None:
                rule.load_state_dict(ckpt["optimizer"])
            gen.set_state(ckpt["rng"])
            state = {k: ckpt[k] for k in state}
            resumed = True
        elif existing and not overwrite:
            hint = ("resume=True found no checkpoint.pt to continue from; pass "
                    "overwrite=True to start afresh there, or another out_dir") if resume else \
                ("pass resume=True to continue it, overwrite=True to replace it, or another "
                 "out_dir")
            raise FileExistsError(f"out_dir {str(out)!r} already holds {existing} of an earlier "
                                  f"run; {hint}")
    records = state["records"]
    bar = _Progress(progress, total)
    clock = time.perf_counter()
    wall0 = state["wall_time"]

    def wall():
        return wall0 + time.perf_counter() - clock

    def evaluate():
        tr = learner.evaluate(xe_tr, ye_tr)
        te = learner.evaluate(xe_te, ye_te)
        values = {"examples": state["examples"], "epoch": state["step"] / per_epoch,
                  "batches": state["step"], "sim_time": state["sim_time"],
                  "wall_time": wall(), "step_wall_time": state["step_wall_time"],
                  "train_loss": tr[0], "train_accuracy": tr[1], "test_loss": te[0],
                  "test_accuracy": te[1]}
        for k, v in values.items():
            records["eval"][k].append(float(v))

    def sample_diagnostics():
        dg = records["diag"]
        earlier = len(dg["examples"])
        for name, value in layer_diagnostics(learner, xp, yp, n_eig=n_eig).items():
            # a diagnostic first met now is NaN at the earlier samples
            blank = [float("nan")] * depth if isinstance(value, list) else float("nan")
            dg.setdefault(name, [blank] * earlier).append(value)
        dg["examples"].append(state["examples"])
        dg["batches"].append(state["step"])
        dg["sim_time"].append(state["sim_time"])

    def write_views(done: bool):
        """trajectory.npz, then summary.json (with ``complete``): both of the checkpoint's
        position, ``timing.batches`` (= the trajectory's last ``batches``)."""
        hist = History.from_records(records, depth, config)
        hist.to_npz(out / "trajectory.npz")
        summary = _summary(hist, config, state, per_epoch, total, done)
        summary["solver"] = {k: getattr(learner, k) for k in
                             ("unconverged", "unconverged_presentations")
                             if hasattr(learner, k)}
        _write_json(out / "summary.json", summary)

    def save(done: bool):
        """Commit one position: the checkpoint first (it holds the records, so it can
        regenerate the other two), then the views. A kill in between leaves the views one
        position behind, and a resume rewrites them from the checkpoint."""
        if out is None:
            return
        state["wall_time"] = wall()
        payload = {k: state[k] for k in state}
        payload.update(learner=learner.state_dict(), rng=gen.get_state(), config=config)
        if rule is not None:
            payload["optimizer"] = rule.state_dict()
        atomic_write(ckpt_path, lambda f: torch.save(payload, f))
        saved["step"] = state["step"]
        write_views(done)

    saved = {"step": state["step"] if resumed else None}   # the checkpoint's position
    if resumed:
        remove_temporaries(out)
        if state["step"] < total:          # extended: the end-of-training sample goes
            _drop_end_sample(records["diag"], state["step"])
        write_views(done=state["step"] == total)
    if state["step"] == 0 and not records["eval"]["examples"]:
        evaluate()
        save(done=total == 0)
    try:
        while state["step"] < total:
            if state["pos"] == 0 or state["perm"] is None:
                state["perm"] = torch.randperm(n, generator=gen)
            idx = state["perm"][state["pos"] * batch_size:(state["pos"] + 1) * batch_size]
            diag_now = diag_steps > 0 and state["step"] % diag_steps == 0
            try:
                if diag_now:
                    _diagnostics_or_cause(sample_diagnostics, learner, xp, yp)
                t0 = time.perf_counter()
                info = _step(learner, x_tr[idx], y_tr[idx], lr_decay ** state["epoch"], rule)
            except NumericalError as err:
                raise NumericalError(f"{err} [batch {state['step'] + 1} of {total}, epoch "
                                     f"{state['step'] / per_epoch:.2f}, simulated time "
                                     f"{state['sim_time']:.6g}; {_kept(out, saved['step'])}]"
                                     ) from None
            state["step_wall_time"] += time.perf_counter() - t0
            if diag_now:
                records["diag"]["step_dW_norm"].append(info["dW_norm"])
            state["step"] += 1
            state["pos"] += 1
            state["examples"] += int(idx.numel())
            state["sim_time"] += float(info.get("sim_time", 0.0))
            if state["pos"] == per_epoch:
                state["pos"], state["epoch"], state["perm"] = 0, state["epoch"] + 1, None
            if diag_steps > 0 and state["step"] == total:
                sample_diagnostics()     # the diagnostics end where the learning curves do
                records["diag"]["step_dW_norm"].append([float("nan")] * depth)  # no step follows
            if state["step"] % eval_steps == 0 or state["step"] == total:
                evaluate()
                save(done=state["step"] == total)
            last = records["eval"]
            note = f"epoch {state['step'] / per_epoch:.2f}"
            if last["test_loss"]:
                note += f" test_loss {last['test_loss'][-1]:.4g}"
                if math.isfinite(last["test_accuracy"][-1]):
                    note += f" test_acc {last['test_accuracy'][-1]:.4f}"
            bar.update(state["step"], note)
    finally:
        bar.close()
    return History.from_records(records, depth, config)


def _step(learner, x, y, scale: float, rule) -> dict:
    """``learner.step`` on one batch; the step-size ``scale`` and the update ``rule`` are
    passed only when they are not 1 and plain SGD, so a learner whose ``step(x, y)`` takes
    neither still trains without ``lr_decay`` and ``optimizer``."""
    extra = {} if scale == 1.0 else {"scale": scale}
    if rule is not None:
        extra["optimizer"] = rule
    return learner.step(x, y, **extra)


def _diagnostics_or_cause(sample, learner, x, y) -> None:
    """``sample()`` (the diagnostics, which present the probe batch ``(x, y)``); a numerical
    failure there says so, with the learner's likely cause (``Learner.failure_hints``)."""
    try:
        sample()
    except NumericalError as err:
        hints = getattr(learner, "failure_hints", lambda *_: [])(x, y)
        cause = f"; likely cause: {'; '.join(hints)}" if hints else ""
        raise NumericalError(f"{err} (in the diagnostics' presentation of the probe batch, "
                             f"before the batch's update{cause})") from None


def _kept(out, saved_step) -> str:
    if out is None:
        return "no out_dir: nothing saved"
    if saved_step is None:
        return "nothing saved yet"
    return f"the last good checkpoint, after batch {saved_step}, is kept in {out}"


def _drop_end_sample(diag: dict, step: int) -> None:
    """Remove the diagnostics sampled at the end of a shorter run (batch ``step``; every other
    sample precedes a step), so that an extended run samples as an uninterrupted one."""
    if diag["batches"] and diag["batches"][-1] == step:
        for values in diag.values():
            if values:
                values.pop()


def _load_checkpoint(path: Path) -> dict:
    """The checkpoint at ``path``; a ``ValueError`` in one line when it cannot be read (it is
    written atomically, so only a file damaged or replaced by hand gets here)."""
    try:
        ckpt = torch.load(path, weights_only=True)
    except Exception as err:  # torch raises EOFError, UnpicklingError, RuntimeError, ...
        raise ValueError(f"resume: {path} cannot be read ({type(err).__name__}: "
                         f"{' '.join(str(err).split())[:200]}); start afresh with "
                         "overwrite=True (--overwrite) or another out_dir") from None
    missing = [k for k in ("config", "learner", "rng", "step", "records") if k not in ckpt] \
        if isinstance(ckpt, dict) else ["everything"]
    if missing:
        raise ValueError(f"resume: {path} is not a dendrite-sim checkpoint (it lacks "
                         f"{', '.join(missing)}); start afresh with overwrite=True "
                         "(--overwrite) or another out_dir")
    return ckpt


def _check_resume_config(saved: dict, current: dict):
    diff = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    if diff:
        raise ValueError(f"resume: the checkpoint was made with a different configuration "
                         f"({', '.join(diff)} differ); use the same learner, data, batch_size, "
                         "seed and evaluation settings, or another out_dir")


def _summary(hist: History, config: dict, state: dict, per_epoch: int, total: int,
             done: bool) -> dict:
    final = hist.final()
    epochs_done = state["step"] / per_epoch if per_epoch else 0.0
    best = float(np.nanmax(hist.test_accuracy)) if np.isfinite(hist.test_accuracy).any() \
        else float("nan")
    return {
        "complete": bool(done),
        "final": final,
        "best_test_accuracy": best,
        "initial": {k: float(getattr(hist, k)[0]) for k in
                    ("train_loss", "train_accuracy", "test_loss", "test_accuracy")}
        if len(hist.examples) else {},
        "config": config,
        "timing": {"wall_time_s": state["wall_time"],
                   "step_wall_time_s": state["step_wall_time"],
                   "step_wall_time_per_epoch_s": state["step_wall_time"] / epochs_done
                   if epochs_done else float("nan"),
                   "sim_time": state["sim_time"], "batches": state["step"],
                   "batches_total": total, "epochs_done": epochs_done,
                   **hist.timing()},
    }
