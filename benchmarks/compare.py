"""One table: every registered learner and every continuous-time model, on the same data,
network and initialisation (docs/discrete.md).

    OMP_NUM_THREADS=1 python benchmarks/compare.py                       # everything
    OMP_NUM_THREADS=1 python benchmarks/compare.py --data digits --learners backprop dtp_ai \
        --seeds 0 1 2 --epochs 20 --out benchmarks/results/compare

For each data set and seed the reference network is ``TwoPhaseDTP(sizes, ...)`` (robustly
invertible ``W``, ``Q = W^+``); every discrete learner copies its weights, every model of the
model registry is built with the same sizes, transfer and seed (the same ``W``) and trained by
the ``dendritic`` learner. Reported: test accuracy (classification) or test MSE (regression)
on the whole test set, mean and standard deviation over seeds, epochs, and the CPU seconds
spent in training steps per example seen (evaluations excluded) relative to backprop on the
same data set and seed in the same run. A learner that does not apply to a network (exact
inverses need equal layer sizes) or fails is listed with the reason. Writes ``compare.md``, ``compare.csv``
and ``compare.png`` (accuracy against relative training time). Continuous-time models take the
options of their default run (``dendrite_sim/configs/<name>.toml``), updated by the measured
``MODEL_SETTINGS`` of each data set (the table's note column says which).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import inspect
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from dendrite_sim.frontend.config import model_registry
from dendrite_sim.frontend.data import load_dataset
from dendrite_sim.learning.learners import learner_class, learner_names
from dendrite_sim.learning.loop import train
from dendrite_sim.models import TwoPhaseDTP

#: data set -> loader kwargs, network, loss, epochs, batch size, and the budget of the
#: continuous-time models (epochs, training examples: None = all), sized to fit ~12 minutes of
#: two shared cores per data set with 3 seeds; ``lr_scale`` multiplies the learners' ``lr`` and
#: ``lr_inv`` (the rates of OPTIONS diverge with the mse loss).
DATASETS = {
    "digits": dict(about="scikit-learn's 8x8 digits, 1257 train / 540 test (stratified 70/30)",
                   loader=dict(), network=dict(sizes=[64, 64, 10], transfer="leaky_relu"),
                   loss="cross_entropy", epochs=40, batch=32, model_epochs=3, model_train=None),
    "mnist1d": dict(about="MNIST-1D, 4000 train / 1000 test",
                    loader=dict(), network=dict(sizes=[40, 100, 100, 10], transfer="leaky_relu"),
                    loss="cross_entropy", epochs=10, batch=32, model_epochs=3, model_train=None),
    "teacher_student": dict(about="thesis §5.1.3 teacher-student regression, 1920 train / 1000 "
                                  "test",
                            loader=dict(), network=dict(sizes=[6, 6, 6],
                                                        transfer=["leaky_relu", "identity"]),
                            loss="mse", epochs=40, batch=32, model_epochs=2, model_train=320,
                            lr_scale=0.1),
    "fashion_mnist": dict(about="Fashion-MNIST, stratified seeded subsets (seed 0) of 10000 of the "
                                "60000 training images and 2000 of the 10000 test images (the "
                                "free equilibria of the continuous-time models on all 10000 "
                                "cost ~4 CPU minutes per cell)",
                          loader=dict(n_train=10000, n_test=2000),
                          network=dict(sizes=[784, 256, 10], transfer="leaky_relu"),
                          loss="cross_entropy", epochs=2, batch=32, model_epochs=1,
                          model_train=2000),
}

#: learner -> options (besides loss); measured choices, docs/discrete.md
OPTIONS = {
    "backprop": dict(lr=0.3),
    "feedback_alignment": dict(lr=0.1),
    "tp_exact": dict(lr=0.05, eta_hat=0.5),
    "dtp_exact": dict(lr=0.05, eta_hat=0.5),
    "tp_ai": dict(lr=0.1, eta_hat=0.5, lr_inv=0.003),
    "dtp_ai": dict(lr=0.1, eta_hat=0.5, lr_inv=0.003),
    "tp_original": dict(lr=0.2, eta_hat=0.5, lr_inv=0.01),
    "dtp_original": dict(lr=0.2, eta_hat=0.5, lr_inv=0.01),
    "dtp_lee": dict(lr=0.003, lr_inv=0.003),
    "gtp": dict(lr=0.1, tau=0.5),
}
#: (data set, learner) -> factor on the learner's ``lr`` and ``lr_inv`` (over the data set's
#: ``lr_scale``), measured where the rates of OPTIONS diverge (seed 0)
LR_SCALE = {
    ("fashion_mnist", "tp_original"): 0.3,    # x1: Q_1 runs away; x0.3: 71.6 %
    ("fashion_mnist", "dtp_original"): 0.3,   # x1: Q_1 runs away; x0.3: 72.4 %
    ("fashion_mnist", "tp_ai"): 0.1,          # x1 and x0.3: b_1 runs away; x0.1: 41.6 %
    ("mnist1d", "tp_original"): 0.3,          # x1: W_1 not finite; x0.3: 26.8 %, x0.1: 19.8 %
    ("mnist1d", "tp_ai"): 0.1,                # x1: Q_1 not finite, x0.3: Q_1 runs away; 25.1 %
}
#: (data set, model) -> settings of the continuous-time model found by measurement for this
#: comparison, over its ``dendrite_sim/configs/<model>.toml``: ``model`` (constructor options,
#: ``transfer`` included), ``training`` (the dendritic learner's ``eta_hat``, ``mode``) and the
#: ``note`` printed in the table
MODEL_SETTINGS = {
    ("digits", "mixture"): dict(
        model=dict(feedback="learned", eta=0.1, eta_inv=0.01),
        note="learned feedback Q (6.26; exact inverses need square layers), eta 0.1, eta_inv "
             "0.01 (eta_inv 0.001: 30.6 %, eta 0.3: not finite; seed 0). Below the others: "
             "with a narrower layer above (64 -> 10) g_1(h_2) != h_1, so (6.17)'s error "
             "mu (f_1 - g_1) is not 0 at zero output error"),
    ("digits", "multiplexing"): dict(
        model=dict(feedback_init="transpose", eta=0.05, eta_inv=0.0),
        note="feedback Q = W^T fixed (eta_inv 0), eta 0.05: with Q = (s'(0) W)^+ the free "
             "equilibrium of the leaky-ReLU network is not finite"),
    ("mnist1d", "two_phase"): dict(
        model=dict(compensate_decay=False, eta=0.5),
        note="compensate_decay off, eta 0.5 (on: layer 1's rate x4^3, W_3 not finite; "
             "eta 1.0: free equilibrium not finite; 0.1: 26.5 %, 0.3: 29.9 %, seed 0)"),
    ("mnist1d", "mixture"): dict(
        model=dict(feedback="learned", eta=0.03, eta_inv=0.01),
        note="learned feedback, eta 0.03, eta_inv 0.01: chance. With a narrower layer above "
             "(100 -> 10) g_2(h_3) != h_2, so (6.17)'s error mu (f_2 - g_2) is not 0 at "
             "zero output error and swamps it; eta 0.1 or eta_inv 0.1: not finite"),
    ("mnist1d", "multiplexing"): dict(
        model=dict(feedback_init="transpose", eta=0.02, eta_inv=0.0),
        note="feedback Q = W^T fixed, eta 0.02 (0.05: 18.6 %, seed 0); Q = (s'(0) W)^+ "
             "(default): free equilibrium not finite"),
    ("mnist1d", "cdtp"): dict(
        budget=(2, 1000),
        note="configs/cdtp.toml with the leaky-ReLU sigma; own budget (100x the cost of the "
             "others per example)"),
    ("teacher_student", "two_phase"): dict(
        model=dict(compensate_decay=False, eta=0.03),
        note="compensate_decay off, eta 0.03 (configs/two_phase.toml's: test MSE 5.8e6 +- "
             "1e7 over 3 seeds; eta 0.1: 43.7, seed 0, with the transient step)"),
    ("teacher_student", "multiplexing"): dict(
        model=dict(eta=0.01, eta_inv=0.0),
        note="eta 0.01, feedback fixed at Q = (s'(0) W)^+ (Q = W^T: 13.3 at eta 0.01, W_2 "
             "runs away at 0.05, seed 0; eta_inv 0.01 with the transient step: b_1 runs away)"),
    ("fashion_mnist", "two_phase"): dict(
        model=dict(compensate_decay=False, eta=0.1),
        note="compensate_decay off, eta 0.1 (on: chance; 0.5: 42.5 % on 1000 examples, W_2 "
             "not finite on 2000; 1.0: W_2 runs away; seed 0)"),
    ("fashion_mnist", "mixture"): dict(
        model=dict(feedback="learned", eta=0.01, eta_inv=0.01),
        note="learned feedback, eta 0.01, eta_inv 0.01 (0.03: W_2 not finite): near chance, "
             "the 256 -> 10 layer as for MNIST-1D"),
    ("fashion_mnist", "multiplexing"): dict(
        model=dict(feedback_init="transpose", eta=0.01, eta_inv=0.0),
        note="feedback Q = W^T fixed, eta 0.01 (0.05: 19.6 %, 0.2: 25.5 %; seed 0, 1000 "
             "examples)"),
}
#: the quasi-static step of the models: the plain step at each phase's equilibrium, with which
#: MODEL_SETTINGS were measured (the learner's default adds the first-order transient
#: correction, docs/derivations.md §10, at ~2.8x the cost of an epoch)
QUASI_STATIC = dict(transient=False)
#: learners of Bengio (2020) on the network of ``CDTP`` (``f_l = W_l sigma(h_{l-1})``)
CDTP_LEARNERS = ("bengio_alg1", "bengio_dtp")
REPORT = Path(__file__).resolve().parents[1] / "docs" / "comparison.md"
RESULTS = Path(__file__).resolve().parent / "results"


def hidden_transfer(network) -> str:
    transfer = network["transfer"]
    return transfer if isinstance(transfer, str) else transfer[0]


def reference_network(network, seed):
    return TwoPhaseDTP(network["sizes"], transfer=network["transfer"], slope=0.3, bias=True,
                       seed=seed, dtype=torch.float32)


def cdtp_network(network, seed):
    """Bengio's network with the same sizes, seed and hidden non-linearity (its output layer
    is linear: ``a_L = W_L sigma(a_{L-1})``)."""
    from dendrite_sim.models.cdtp import CDTP
    return CDTP(network["sizes"], sigma=hidden_transfer(network), slope=0.3, seed=seed,
                dtype=torch.float32)


def model_config(key, data=None) -> tuple[dict, dict]:
    """``([model] options, [training] options)`` of ``dendrite_sim/configs/<key>.toml`` (the
    model's own default run), without the keys the comparison sets itself, updated by
    ``MODEL_SETTINGS[(data, key)]`` (which may also set the hidden ``transfer``)."""
    import tomllib
    path = Path(__file__).resolve().parents[1] / "dendrite_sim" / "configs" / f"{key}.toml"
    config = tomllib.loads(path.read_text()) if path.is_file() else {}
    model = {k: v for k, v in config.get("model", {}).items()
             if k not in ("name", "sizes", "seed", "dtype", "transfer", "sigma")}
    training = {k: v for k, v in config.get("training", {}).items()
                if k in ("eta_hat", "mode", "transient")}
    settings = MODEL_SETTINGS.get((data, key), {})
    return {**model, **settings.get("model", {})}, {**training, **settings.get("training", {})}


def continuous_model(cls, key, network, seed, data=None):
    """The model of ``key`` with the comparison's sizes, seed and transfer (``sigma`` for a
    model that names it so; ``MODEL_SETTINGS`` may name another), the rest from its
    configuration."""
    options, _ = model_config(key, data)
    accepted = inspect.signature(cls).parameters
    options = {k: v for k, v in options.items() if k in accepted}
    for k, v in (("slope", 0.3), ("bias", True)):
        if k in accepted:
            options.setdefault(k, v)
    if "transfer" in accepted:
        options.setdefault("transfer", network["transfer"])
    elif "sigma" in accepted:
        options["sigma"] = hidden_transfer(network)
    return cls(sizes=network["sizes"], seed=seed, dtype=torch.float32, **options)


def training_subset(data, n):
    """The first ``n`` training examples (the loaders shuffle), the full test set."""
    if n is None or n >= len(data.x_train):
        return data
    return dataclasses.replace(data, x_train=data.x_train[:n], y_train=data.y_train[:n])


@functools.lru_cache(maxsize=2)
def cached_dataset(name):
    return load_dataset(name, **DATASETS[name]["loader"])


def make_learner(entry, kind, network, loss, seed, lr_scale=1.0, data=None):
    if kind == "model":
        return learner_class("dendritic")(
            continuous_model(model_registry()[entry], entry, network, seed, data), loss=loss,
            **{**QUASI_STATIC, **model_config(entry, data)[1]})
    name = entry.split(" (")[0]     # "backprop (model budget)" is backprop
    model = cdtp_network(network, seed) if name in CDTP_LEARNERS else \
        reference_network(network, seed)
    lr_scale *= LR_SCALE.get((data, name), 1.0)
    options = {k: v * lr_scale if k in ("lr", "lr_inv") else v
               for k, v in OPTIONS.get(name, {}).items()}
    accepted = inspect.signature(learner_class(name)).parameters
    if name in CDTP_LEARNERS:
        options.update({k: v for k, v in (("transfer", hidden_transfer(network)),
                                          ("slope", 0.3)) if k in accepted})
    return learner_class(name)(model, loss=loss, **options)


def timed_steps(learner) -> list[float]:
    """Make ``learner.step`` add the CPU seconds (``time.process_time``) it takes to the one
    element of the returned list. CPU time, not wall time: the machine is shared, and a cell runs
    in one process with one torch thread, so on an idle core the two agree."""
    seconds, step = [0.0], learner.step

    def timed(x, y, **kwargs):
        start = time.process_time()
        try:
            return step(x, y, **kwargs)
        finally:
            seconds[0] += time.process_time() - start
    learner.step = timed
    return seconds


def run_cell(name, seed, entry, kind, epochs, n_train):
    """One cell in this process (one torch thread): ``{"metric", "per_example"}`` (test
    accuracy or MSE on the whole test set, CPU seconds in the learner's training steps per
    example seen, evaluations excluded) or ``{"error": one line}``."""
    torch.set_num_threads(1)
    spec = DATASETS[name]
    data = training_subset(cached_dataset(name), n_train)
    try:
        learner = make_learner(entry, kind, spec["network"], spec["loss"], seed,
                               spec.get("lr_scale", 1.0), name)
        seconds = timed_steps(learner)
        train(learner, data, epochs=epochs, batch_size=spec["batch"], seed=seed,
              eval_every=epochs, progress=False, diagnostics_every=0, max_eval=64)
        x_test, y_test = data.tensors(dtype=learner.dtype, device=learner.device)[2:]
        loss, accuracy = learner.evaluate(x_test, y_test)   # the whole test set
        metric = accuracy if data.task == "classification" else 2 * loss
        if not math.isfinite(metric):
            raise FloatingPointError(f"test metric is {metric} (diverged)")
    except Exception as err:      # reported in the table, never hidden
        return {"error": f"{type(err).__name__}: {' '.join(str(err).split())}"}
    return {"metric": float(metric), "per_example": seconds[0] / (epochs * len(data.x_train)),
            "epochs": epochs, "n_train": len(data.x_train)}


def cells_for(name, args):
    """``(name, seed, entry, kind, epochs, n_train)`` of every cell of one data set. A model
    runs on the data set's model budget, or on its own (``MODEL_SETTINGS[...]["budget"]``);
    ``backprop`` runs on each of these budgets too, as the models' reference point."""
    spec = DATASETS[name]
    epochs = args.epochs or spec["epochs"]
    default = (min(epochs, args.model_epochs or spec["model_epochs"]), spec["model_train"])
    models = {}
    for key, cls in model_registry().items():
        models.setdefault(cls, key)
    keys = [key for key in models.values() if args.models is None or key in args.models]
    budgets = {k: tuple(MODEL_SETTINGS.get((name, k), {}).get("budget", default)) for k in keys}
    references = {b: "backprop (model budget)" if b == default else f"backprop (budget of {k})"
                  for k, b in reversed(budgets.items())}
    learners = ["backprop"] + [n for n in args.learners if n != "backprop"]
    cells = []
    for seed in args.seeds:
        cells += [(name, seed, n, "learner", epochs, None) for n in learners]
        cells += [(name, seed, entry, "learner", *b) for b, entry in references.items()]
        cells += [(name, seed, k, "model", *budgets[k]) for k in keys]
    return cells


def run_cells(cells, backend, workers):
    """``{cell: answer}``, one after another or on a pool of ``workers`` processes (spawned,
    one torch thread each, like the sweep runner's ``"processes"`` backend)."""
    answers = {}
    if backend == "serial":
        for cell in cells:
            answers[cell] = run_cell(*cell)
            print(f"{cell}: {answers[cell]}", file=sys.stderr, flush=True)
        return answers
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    with ProcessPoolExecutor(max_workers=workers,
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        first = sorted(cells, key=lambda c: c[3] != "model")   # the long cells first
        futures = {pool.submit(run_cell, *cell): cell for cell in first}
        for future in as_completed(futures):
            answers[futures[future]] = future.result()
            print(f"{futures[future]}: {answers[futures[future]]}", file=sys.stderr, flush=True)
    return answers


def rows_from(cells, answers):
    """One row per (data, entry): mean and std over seeds; time per example relative to
    backprop (full budget) of the same seed."""
    base = {(c[0], c[1]): answers[c]["per_example"] for c in cells
            if c[2] == "backprop" and "per_example" in answers[c]}
    groups = {}
    for cell in cells:
        groups.setdefault((cell[0], cell[2], cell[3]), []).append(cell)
    rows = []
    for (name, entry, kind), group in groups.items():
        good = [c for c in group if "metric" in answers[c]]
        task = "regression" if DATASETS[name]["loss"] == "mse" else "classification"
        row = {"data": name, "name": entry, "kind": kind, "seeds": len(good),
               "metric": "accuracy" if task == "classification" else "test MSE",
               "epochs": group[0][4], "n_train": "all" if group[0][5] is None else group[0][5]}
        setting = MODEL_SETTINGS.get((name, entry), {}).get("note", "") if kind == "model" \
            else (f"lr and lr_inv x{LR_SCALE[name, entry]:g} (x1 diverges)"
                  if (name, entry) in LR_SCALE else "")
        if good:
            m = np.array([answers[c]["metric"] for c in good])
            t = [answers[c]["per_example"] / base[c[:2]] for c in good if c[:2] in base]
            row.update(mean=m.mean(), std=m.std(ddof=1) if len(m) > 1 else float("nan"),
                       time_vs_backprop=float(np.mean(t)) if t else float("nan"),
                       note=setting if len(good) == len(group) else
                       f"{setting}; {len(group) - len(good)} seed(s) failed: ".lstrip("; ")
                       + next(answers[c]["error"] for c in group if "error" in answers[c])[:100])
        else:
            row.update(mean=float("nan"), std=float("nan"), time_vs_backprop=float("nan"),
                       note=f"{setting}; {answers[group[0]]['error'][:160]}".lstrip("; "))
        rows.append(row)
    return rows


KEYS = ["data", "name", "kind", "metric", "mean", "std", "seeds", "epochs", "n_train",
        "time_vs_backprop", "note"]
#: how ``time_vs_backprop`` was measured (a CSV column, not in the table); files of an earlier
#: version have none: wall time of ``train`` per example, evaluations included
TIMING = "CPU time of the training steps"
HEADER = ["data", "learner / model", "kind", "metric", "mean", "std", "seeds", "epochs",
          "training examples", "CPU time per example / backprop", "note"]


def markdown_table(rows) -> str:
    def fmt(v):
        if isinstance(v, float):
            return "" if math.isnan(v) else f"{v:.4g}"
        return str(v)
    lines = ["| " + " | ".join(HEADER) + " |", "|" + " --- |" * len(HEADER)]
    lines += ["| " + " | ".join(fmt(r[k]) for k in KEYS) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write(rows, out: Path):
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=KEYS + ["timing"])
        w.writeheader()
        w.writerows({**r, "timing": r.get("timing", TIMING)} for r in rows)
    out.with_suffix(".md").write_text(markdown_table(rows))
    figure(rows, out.with_suffix(".png"))


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:     # files of an earlier version lack some columns
        for k in KEYS + ["timing"]:
            r.setdefault(k, "all" if k == "n_train" else "")
        for k in ("mean", "std", "time_vs_backprop"):
            r[k] = float(r[k]) if r[k] not in ("", None) else float("nan")
    return rows


TITLES = {"digits": "scikit-learn digits (8x8)", "mnist1d": "MNIST-1D",
          "teacher_student": "teacher-student regression", "fashion_mnist": "Fashion-MNIST"}


MARKERS = "o^vDs<>pPhX*d"


def figure(rows, path):
    """Metric against training time relative to backprop, one panel per data set: filled
    markers the discrete learners, open ones the continuous-time models, error bars the std
    over seeds; the rows without a result are named under the panel."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    sets = list(dict.fromkeys(r["data"] for r in rows))
    fig, axes = plt.subplots(1, len(sets), figsize=(9 * len(sets), 5.5), squeeze=False)
    for ax, name in zip(axes[0], sets):
        mine = [r for r in rows if r["data"] == name]
        shown = [r for r in mine if not math.isnan(r["mean"])
                 and not math.isnan(r["time_vs_backprop"])]
        count = {"learner": 0, "model": 0}
        for r in shown:
            i = count[r["kind"]]
            count[r["kind"]] += 1
            if r["kind"] == "learner":
                color, marker = plt.cm.tab10(i % 10), MARKERS[i % len(MARKERS)]
            else:   # shapes that read well open, colours apart from the first learners'
                color, marker = plt.cm.tab10((9 - i) % 10), "sDo^v"[i % 5]
            std = 0 if math.isnan(r["std"]) else r["std"]
            ax.errorbar(r["time_vs_backprop"], r["mean"], yerr=std, fmt=marker,
                        markersize=8, capsize=3, color=color, mew=2,
                        mfc=color if r["kind"] == "learner" else "none",
                        label=f"{r['name']} ({r['epochs']} ep., {r['n_train']} ex.)")
        ax.set_xscale("log")
        metric = mine[0]["metric"]
        if metric == "test MSE":
            ax.set_yscale("log")
            ax.set_ylabel("test mean squared error (lower is better)")
        else:
            if shown and min(r["mean"] for r in shown) < 0.3:   # else it squeezes the rest
                ax.axhline(0.1, color="grey", ls=":", lw=1, label="chance (10 classes)")
            ax.set_ylabel("test accuracy (fraction correct)")
        ax.set_xlabel("training CPU time per example / backprop's (same run, log scale)")
        ax.set_title(f"{TITLES.get(name, name)}: mean ± std over seeds\n"
                     "filled: discrete learners, open: continuous-time models", fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
        missing = [r["name"] for r in mine if r not in shown]
        if missing:
            ax.text(0, -0.16, "no result (see the table): " + ", ".join(missing),
                    transform=ax.transAxes, fontsize=7, va="top", wrap=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(results: Path = RESULTS, out: Path = REPORT):
    """``docs/comparison.md``: the table and figure of every ``compare_<data>.csv``."""
    parts = [REPORT_HEAD]
    for name in DATASETS:
        csv_path = results / f"compare_{name}.csv"
        if not csv_path.is_file():
            parts.append(f"## {TITLES[name]}\n\nNot run (no `{csv_path.name}`).\n")
            continue
        rows = read_rows(csv_path)
        spec = DATASETS[name]
        note = ("" if all(r["timing"] == TIMING for r in rows) else
                "\n\nFrom an earlier version of this script (time: wall time of the whole "
                "training per example, evaluations included; model settings of their default "
                f"configurations): rerun with `--data {name}` to refresh.")
        png = csv_path.with_suffix(".png")
        figure(rows, png)
        rel = os.path.relpath(png, out.parent)
        sizes = "-".join(map(str, spec["network"]["sizes"]))
        parts.append(f"## {TITLES[name]}\n\nData: {spec['about']}. Network {sizes},"
                     f" transfer {spec['network']['transfer']}, loss {spec['loss']}, batch "
                     f"{spec['batch']}.{note}\n\n{markdown_table(rows)}\n![{TITLES[name]}]({rel})\n")
    out.write_text("\n".join(parts))
    return out


REPORT_HEAD = """# Comparison of the learners and continuous-time models

Generated by `OMP_NUM_THREADS=1 python benchmarks/compare.py --all --backend processes
--workers 2` (every data set, 3 seeds; 15-30 minutes each on two shared cores) or, from the
stored `benchmarks/results/compare_<data>.csv`, by `python benchmarks/compare.py --report`.
Method: docs/discrete.md and the docstring of `benchmarks/compare.py`.

Every discrete learner starts from the weights of the same `TwoPhaseDTP` network (Bengio's
learners `bengio_*`: from a `CDTP` network of the same sizes, seed and hidden non-linearity,
`f_l = W_l sigma(h_{l-1})`). Every continuous-time model is built with the same sizes,
transfer and seed; its other options come from its `dendrite_sim/configs/<name>.toml`, updated
by the settings measured for the data set (`MODEL_SETTINGS` in `benchmarks/compare.py`, quoted
in the note column); it is trained by the `dendritic` learner with the plain quasi-static step
(`transient=False`, with which the settings were measured; the learner's default now adds the
first-order transient correction, docs/derivations.md §10, at ~2.8x the cost; CDTP runs in
coupled mode). The models are expensive, so they get a smaller budget (the `epochs` and
`training examples` columns); `backprop (model budget)` (or `backprop (budget of <model>)` for a
model on its own budget) is backprop on exactly that budget, their point of reference.

Metric: test accuracy on the test set of the section's "Data" line, or test MSE
(teacher-student). Time: CPU seconds spent in training steps per example seen (evaluations
excluded; each cell runs in one process with one torch thread, so on an idle core this is its
wall time), relative to backprop (full budget) of the same seed in the same run. CPU time rather
than wall time because the machine is shared with other jobs; cache and memory contention
remain, so the ratios are rough (the same cell varied up to 3x between seeds). A learner or
model that does not apply or fails gives its reason.
"""


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", nargs="+", default=None, choices=list(DATASETS))
    p.add_argument("--all", action="store_true",
                   help="every data set, each into benchmarks/results/compare_<data>.*, then "
                        "docs/comparison.md")
    p.add_argument("--report", action="store_true",
                   help="only rebuild docs/comparison.md (and figures) from the stored CSVs")
    discrete = [n for n in learner_names() if n != "dendritic"]
    p.add_argument("--learners", nargs="+", default=discrete, choices=discrete)
    p.add_argument("--models", nargs="*", default=None,
                   help="continuous-time models (model registry names); none: --models")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=None, help="override every data set's epochs")
    p.add_argument("--model-epochs", type=int, default=None,
                   help="override the models' epochs (default: per data set)")
    p.add_argument("--backend", choices=("serial", "processes"), default="serial")
    p.add_argument("--workers", type=int, default=os.cpu_count())
    p.add_argument("--out", default=None,
                   help="output stem (default benchmarks/results/compare_<data>)")
    args = p.parse_args(argv)
    if args.report:
        print(report())
        return
    names = list(DATASETS) if args.all or args.data is None else args.data
    for name in names:
        try:
            load_dataset(name, **DATASETS[name]["loader"])
        except (ValueError, FileNotFoundError, ImportError) as err:
            print(f"{name}: skipped ({err})", file=sys.stderr)
            continue
        cells = cells_for(name, args)
        rows = rows_from(cells, run_cells(cells, args.backend, args.workers))
        out = Path(args.out) if args.out and len(names) == 1 else RESULTS / f"compare_{name}"
        write(rows, out)
        print(out.with_suffix(".md").read_text())
    if args.all:
        print(f"wrote {report()}")


if __name__ == "__main__":
    main()
