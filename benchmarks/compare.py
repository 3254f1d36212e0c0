"""One table: every registered learner and every continuous-time model, on the same data,
network and initialisation (docs/discrete.md).

    OMP_NUM_THREADS=1 python benchmarks/compare.py                       # everything
    OMP_NUM_THREADS=1 python benchmarks/compare.py --data digits --learners backprop dtp_ai \
        --seeds 0 1 2 --epochs 20 --out benchmarks/results/compare

For each data set and seed the reference network is ``TwoPhaseDTP(sizes, ...)`` (robustly
invertible ``W``, ``Q = W^+``); every discrete learner copies its weights, every model of the
model registry is built with the same sizes, transfer and seed (the same ``W``) and trained by
the ``dendritic`` learner. Reported: test accuracy (classification) or test MSE (regression),
mean and standard deviation over seeds, epochs, and wall time per epoch relative to backprop
on the same data set and seed in the same run. A learner that does not apply to a network (exact inverses
need equal layer sizes) or fails is listed with the reason. Writes ``compare.md``,
``compare.csv`` and ``compare.png`` (accuracy against relative wall time). Continuous-time
models take the options of their default run (``dendrite_sim/configs/<name>.toml``).
"""
from __future__ import annotations

import argparse
import csv
import math
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

#: data set -> (loader kwargs, network, loss, epochs, batch size)
DATASETS = {
    "digits": (dict(), dict(sizes=[64, 64, 10], transfer="leaky_relu"), "cross_entropy", 40, 32),
    "mnist1d": (dict(), dict(sizes=[40, 100, 100, 10], transfer="leaky_relu"), "cross_entropy",
                20, 32),
    "teacher_student": (dict(), dict(sizes=[6, 6, 6], transfer=["leaky_relu", "identity"]),
                        "mse", 10, 1),
    "fashion_mnist": (dict(n_train=10000, n_test=2000), dict(sizes=[784, 256, 10],
                      transfer="leaky_relu"), "cross_entropy", 5, 32),
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
#: continuous-time models: epochs are expensive, so fewer (the column says how many)
MODEL_EPOCHS = 3


def reference_network(network, seed):
    return TwoPhaseDTP(network["sizes"], transfer=network["transfer"], slope=0.3, bias=True,
                       seed=seed, dtype=torch.float32)


def model_config(key) -> tuple[dict, dict]:
    """``([model] options, [training] options)`` of ``dendrite_sim/configs/<key>.toml`` (the
    model's own default run), without the keys the comparison sets itself."""
    import tomllib
    path = Path(__file__).resolve().parents[1] / "dendrite_sim" / "configs" / f"{key}.toml"
    if not path.is_file():
        return {}, {}
    config = tomllib.loads(path.read_text())
    model = {k: v for k, v in config.get("model", {}).items()
             if k not in ("name", "sizes", "seed", "dtype", "transfer")}
    training = {k: v for k, v in config.get("training", {}).items() if k == "eta_hat"}
    return model, training


def continuous_model(cls, key, network, seed):
    options, _ = model_config(key)
    options.setdefault("slope", 0.3)
    options.setdefault("bias", True)
    return cls(sizes=network["sizes"], transfer=network["transfer"], seed=seed,
               dtype=torch.float32, **options)


def run_one(make, data, loss, epochs, batch, seed):
    """``(metric, seconds)``: final test accuracy (or MSE) and training wall time."""
    learner = make()
    start = time.perf_counter()
    hist = train(learner, data, epochs=epochs, batch_size=batch, seed=seed, progress=False,
                 diagnostics_every=0, max_eval=2000)
    seconds = time.perf_counter() - start
    final = hist.final()
    metric = final["test_accuracy"] if data.task == "classification" else 2 * final["test_loss"]
    return float(metric), seconds


def rows_for(name, args):
    loader_kwargs, network, loss, epochs, batch = DATASETS[name]
    epochs = args.epochs or epochs
    data = load_dataset(name, **loader_kwargs)
    models = {}
    for key, cls in model_registry().items():
        models.setdefault(cls, key)
    entries = [(n, "learner") for n in args.learners] + \
        [(key, "model") for cls, key in models.items() if args.models is None or key in args.models]
    results = {}
    for seed in args.seeds:
        base_time = None
        for entry, kind in [("backprop", "learner")] + [e for e in entries if e[0] != "backprop"]:
            if kind == "learner":
                cls = learner_class(entry)
                make = lambda: cls(reference_network(network, seed), loss=loss, **OPTIONS.get(entry, {}))
                n_ep = epochs
            else:
                cls = model_registry()[entry]
                make = lambda: learner_class("dendritic")(
                    continuous_model(cls, entry, network, seed), loss=loss,
                    **model_config(entry)[1])
                n_ep = min(epochs, args.model_epochs)
            try:
                metric, seconds = run_one(make, data, loss, n_ep, batch, seed)
                per_epoch = seconds / n_ep
                base_time = per_epoch if entry == "backprop" else base_time
                results.setdefault((entry, kind), []).append((metric, per_epoch / base_time,
                                                              n_ep))
            except Exception as err:      # reported in the table, never hidden
                results.setdefault((entry, kind), []).append((f"{type(err).__name__}: {err}",))
            print(f"{name} seed {seed} {entry}: {results[(entry, kind)][-1]}", file=sys.stderr)
    rows = []
    for (entry, kind), values in results.items():
        good = [v for v in values if len(v) == 3]
        row = {"data": name, "name": entry, "kind": kind, "seeds": len(good),
               "metric": "accuracy" if data.task == "classification" else "test MSE"}
        if good:
            m = np.array([v[0] for v in good])
            t = np.array([v[1] for v in good])
            row.update(mean=m.mean(), std=m.std(ddof=1) if len(m) > 1 else float("nan"),
                       epochs=good[0][2], time_vs_backprop=t.mean(), note="")
        else:
            row.update(mean=float("nan"), std=float("nan"), epochs=0,
                       time_vs_backprop=float("nan"), note=values[0][0][:120])
        rows.append(row)
    return rows


def write(rows, out: Path):
    out.parent.mkdir(parents=True, exist_ok=True)
    keys = ["data", "name", "kind", "metric", "mean", "std", "seeds", "epochs",
            "time_vs_backprop", "note"]
    with open(out.with_suffix(".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    lines = ["| data | learner / model | kind | metric | mean | std | seeds | epochs | "
             "wall time per epoch / backprop | note |", "|" + " --- |" * 10]
    for r in rows:
        fmt = lambda v: "" if isinstance(v, float) and math.isnan(v) else \
            (f"{v:.4f}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(fmt(r[k]) for k in keys) + " |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    figure(rows, out.with_suffix(".png"))


def figure(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    sets = sorted({r["data"] for r in rows})
    fig, axes = plt.subplots(1, len(sets), figsize=(5.5 * len(sets), 4.5), squeeze=False)
    for ax, name in zip(axes[0], sets):
        for r in (r for r in rows if r["data"] == name and not math.isnan(r["mean"])):
            marker = "o" if r["kind"] == "learner" else "s"
            ax.errorbar(r["time_vs_backprop"], r["mean"], yerr=0 if math.isnan(r["std"])
                        else r["std"], fmt=marker, capsize=3)
            ax.annotate(r["name"], (r["time_vs_backprop"], r["mean"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        metric = next(r["metric"] for r in rows if r["data"] == name)
        ax.set_xlabel("training wall time per epoch relative to backprop (same run)")
        ax.set_ylabel(f"test {metric}" if metric == "accuracy" else metric)
        ax.set_title(f"{name}: mean ± std over seeds\n(circles: discrete learners, "
                     "squares: continuous-time models)", fontsize=9)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    discrete = [n for n in learner_names() if n != "dendritic"]
    p.add_argument("--learners", nargs="+", default=discrete, choices=discrete)
    p.add_argument("--models", nargs="*", default=None,
                   help="continuous-time models (model registry names); none: --models")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=None, help="override every data set's epochs")
    p.add_argument("--model-epochs", type=int, default=MODEL_EPOCHS)
    p.add_argument("--out", default="benchmarks/results/compare")
    args = p.parse_args(argv)
    rows = []
    for name in args.data:
        try:
            rows += rows_for(name, args)
        except (ValueError, FileNotFoundError, ImportError) as err:
            print(f"{name}: skipped ({err})", file=sys.stderr)
    write(rows, Path(args.out))
    print(Path(args.out).with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
