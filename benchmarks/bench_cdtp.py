"""CDTP (B20 §10.2) on sklearn digits beside B20 Algorithm 1 and backprop on the same network,
with the figures of its relaxation.

Everything comes from the default configuration (``dendrite_sim/configs/cdtp.toml``, what
``dendrite-sim run cdtp`` runs): the model, the solver, the batches, and the baselines built as
the CLI builds them (``bengio_alg1`` and ``backprop`` with ``lr = training.backprop_lr``), all
from the same initial weights. Prints, per learner and seed, the test accuracy after
``--epochs`` and the wall time (with its ratio to backprop's), then mean +- std over the seeds;
for CDTP also

* gate cycles per example: one presentation of a mini-batch is ``schedule.cycles`` gate
  cycles, so an example sees ``epochs * cycles`` cycles in training;
* field evaluations: per presentation (one batched evaluation serves the whole mini-batch),
  per example and presentation (``nfev / batch``), and in all per example over training;
* the inversion residual reached at the end of the relaxation (just before the fast return),
  ``||f_l(tau_{l-1}) - tau_l|| / ||tau_l - h_l||`` per layer ``l >= 2`` (``h_l`` the
  feed-forward activity, held in the buffer ``a_l``), on the first training batch with the
  weights at the start and at the end of training, from a float64 solution to rtol 1e-8.

Usage (about 4 minutes per seed on one idle core at the defaults)::

    OMP_NUM_THREADS=1 python benchmarks/bench_cdtp.py [--epochs 10] [--seeds 0 1 2]
        [--learners cdtp bengio_alg1 backprop] [--set section.key=value ...]
"""
import argparse
import statistics
import time

import torch

from dendrite_sim import simulate
from dendrite_sim.dynamics.teaching import Nudge
from dendrite_sim.frontend.config import (build_data, build_learner, build_model,
                                          build_schedule, load_config)


def relaxation_residual(model, x, y, beta):
    """``||f_l(tau_{l-1}) - tau_l|| / ||tau_l - a_l||`` for ``l = 2..L`` at the end of one
    gate cycle's relaxation (float64, tight tolerances, weights held)."""
    exact = model.replace(dtype=torch.float64)
    exact.params = {k: [None if p is None else p.double() for p in v]
                    for k, v in model.params.items()}
    sch = exact.default_schedule(plastic_omega=False)
    end = sch.duration * (1 - 1e-9)              # just before the fast return
    tr = simulate(exact, x.double(), [0.0, end], Nudge(y, "cross_entropy", beta),
                  gates=sch.gates, breakpoints=sch.breakpoints, rtol=1e-8, atol=1e-10)
    p = exact.layout.unpack(tr.final)
    return [float((exact.f(l, p["tau"][l - 2]) - p["tau"][l - 1]).norm()
                  / (p["tau"][l - 1] - p["a"][l - 1]).norm()) for l in range(2, exact.depth + 1)]


def run(cfg, data, name, epochs):
    """Train learner ``name`` (``"cdtp"``: the configured one) for ``epochs``; returns
    ``(test accuracy, info)``."""
    model = build_model(cfg, data)
    schedule = build_schedule(cfg, model)
    learner = build_learner(cfg, model, schedule, None if name == "cdtp" else name)
    x, xte = (torch.as_tensor(a, dtype=model.dtype) for a in (data.x_train, data.x_test))
    y, yte = (torch.as_tensor(a).long() for a in (data.y_train, data.y_test))
    batch, seed = cfg["training"]["batch_size"], cfg["training"]["seed"]
    beta = cfg["training"]["eta_hat"]
    gen = torch.Generator().manual_seed(seed)
    info = {"nfev": 0, "presentations": 0}
    if name == "cdtp":
        info["residual_start"] = relaxation_residual(model, x[:batch], y[:batch], beta)
        info["cycles"] = round(schedule.duration / model.period)
    t0 = time.time()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch):
            step = learner.step(x[perm[i:i + batch]], y[perm[i:i + batch]])
            info["nfev"] += step.get("nfev", 0)
            info["presentations"] += 1
    info["seconds"] = time.time() - t0
    if name == "cdtp":
        info["residual_end"] = relaxation_residual(model, x[:batch], y[:batch], beta)
    return learner.evaluate(xte, yte)[1], info


def cdtp_lines(info, epochs, batch):
    per_pres = info["nfev"] / info["presentations"]
    return (f"    gate cycles per example: {info['cycles']} per presentation, "
            f"{epochs * info['cycles']} in training\n"
            f"    field evaluations: {per_pres:.0f} per presentation, each over the batch of "
            f"{batch} (so {per_pres / batch:.2f} per example in compute), "
            f"{epochs * per_pres:.0f} per example over training\n"
            f"    inversion residual ||f(tau_(l-1)) - tau_l|| / ||tau_l - h_l||, l = 2..L: "
            f"start {[round(r, 3) for r in info['residual_start']]}, "
            f"end {[round(r, 3) for r in info['residual_end']]}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=None, help="default: training.epochs")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--learners", nargs="+", default=["cdtp", "bengio_alg1", "backprop"])
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override the default configuration (as dendrite-sim run --set)")
    args = ap.parse_args()
    base = load_config("cdtp", args.set)
    epochs = args.epochs or base["training"]["epochs"]
    m = base["model"]
    print(f"CDTP default configuration: sizes {m['sizes']}, waveform {m['waveform']}, "
          f"period {m['period']}, duty {m['duty']}, eta {m['eta']}, "
          f"beta {base['training']['eta_hat']}, batch {base['training']['batch_size']}, "
          f"{epochs} epochs, seeds {args.seeds}; overrides {args.set}")
    results, seconds = {}, {}
    for seed in args.seeds:
        cfg = load_config("cdtp", args.set + [f"model.seed={seed}", f"training.seed={seed}"])
        data = build_data(cfg)
        for name in args.learners:
            acc, info = run(cfg, data, name, epochs)
            results.setdefault(name, []).append(acc)
            seconds.setdefault(name, []).append(info["seconds"])
            print(f"{name:12s} seed {seed}: test acc {100 * acc:.2f} %  "
                  f"{info['seconds']:.1f} s", flush=True)
            if name == "cdtp":
                print(cdtp_lines(info, epochs, cfg["training"]["batch_size"]), flush=True)
    for name, accs in results.items():
        spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
        wall = statistics.mean(seconds[name])
        ratio = (f", {wall / statistics.mean(seconds['backprop']):.0f}x backprop's wall time"
                 if "backprop" in seconds and name != "backprop" else "")
        print(f"{name:12s} mean {100 * statistics.mean(accs):.2f} % +- {100 * spread:.2f} "
              f"(std over {len(accs)} seeds), {wall:.1f} s per run{ratio}")


if __name__ == "__main__":
    main()
