"""CDTP (B20 §10.2) on sklearn digits beside B20 Algorithm 1 and backprop on the same network,
and the relaxation figures of one gate cycle.

Prints, per learner, the test accuracy after ``--epochs`` (mean and std over ``--seeds``), and
for CDTP at the start and the end of training: gate cycles per example (one presentation is
one cycle), field evaluations per example batch, and the inversion residual reached at the end
of the relaxation, ``||f_l(tau_{l-1}) - tau_l|| / ||tau_l - h_l||`` per layer (``h_l`` the
feed-forward activity, so the residual is relative to the target change).

Bounded: defaults take about ``8 * epochs`` minutes per seed on one busy core (heun3 at 0.5
time units, 20 per cycle). Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_cdtp.py [--epochs 10] [--seeds 0 1 2]
        [--max-train N]
"""
import argparse
import statistics
import time

import torch

from dendrite_sim import simulate
from dendrite_sim.dynamics.teaching import Nudge
from dendrite_sim.frontend.data import load_dataset
from dendrite_sim.learning.learners import learner_class
from dendrite_sim.models.cdtp import CDTP

SIZES = [64, 64, 64, 10]
SOLVER = {"method": "heun3", "step_size": 0.5}


def make_learner(name, model):
    if name == "cdtp":
        return learner_class("dendritic")(model, mode="coupled", eta_hat=1.0,
                                          present_kwargs=SOLVER)
    if name == "bengio_alg1":
        return learner_class(name)(model, lr=0.5, beta=0.5)
    return learner_class(name)(model, lr=0.1)


def relaxation(model, x, y):
    """(field evaluations, residual per layer) of one cycle on ``x`` with the current weights."""
    sch = model.default_schedule(plastic_omega=False)
    end = sch.duration * (1 - 1e-9)              # just before the fast return
    tr = simulate(model, x, [0.0, end], Nudge(y, "cross_entropy", 1.0), gates=sch.gates,
                  breakpoints=sch.breakpoints, **SOLVER)
    p = model.layout.unpack(tr.final)
    out = []
    for l in range(2, model.depth + 1):
        residual = model.f(l, p["tau"][l - 2]) - p["tau"][l - 1]
        out.append(float(residual.norm() / (p["tau"][l - 1] - p["a"][l - 1]).norm()))
    return tr.nfev, out


def run(name, seed, data, epochs, batch):
    torch.manual_seed(seed)
    model = CDTP(SIZES, seed=seed)
    learner = make_learner(name, model)
    xtr, ytr, xte, yte = data
    gen = torch.Generator().manual_seed(seed)
    info = {}
    if name == "cdtp":
        info["start"] = relaxation(model, xtr[:batch], ytr[:batch])
    t0 = time.time()
    for _ in range(epochs):
        perm = torch.randperm(len(xtr), generator=gen)
        for i in range(0, len(xtr), batch):
            learner.step(xtr[perm[i:i + batch]], ytr[perm[i:i + batch]])
    info["seconds"] = time.time() - t0
    if name == "cdtp":
        info["end"] = relaxation(model, xtr[:batch], ytr[:batch])
    return learner.evaluate(xte, yte)[1], info


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--max-train", type=int, default=None)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--learners", nargs="+", default=["cdtp", "bengio_alg1", "backprop"])
    args = ap.parse_args()
    d = load_dataset("digits")
    data = [torch.as_tensor(a) for a in (d.x_train, d.y_train, d.x_test, d.y_test)]
    if args.max_train:
        data[0], data[1] = data[0][:args.max_train], data[1][:args.max_train]
    print(f"digits {len(data[0])} train / {len(data[2])} test, network {SIZES}, "
          f"{args.epochs} epochs, batch {args.batch}, seeds {args.seeds}")
    print("cdtp: one gate cycle per example batch; nfev per cycle of the batch")
    for name in args.learners:
        accs = []
        for seed in args.seeds:
            acc, info = run(name, seed, data, args.epochs, args.batch)
            accs.append(acc)
            extra = "".join(f"  {k}: nfev {v[0]}, residual {[round(r, 4) for r in v[1]]}"
                            for k, v in info.items() if k in ("start", "end"))
            print(f"{name:12s} seed {seed}: test acc {100 * acc:.2f} %  "
                  f"({info['seconds']:.0f} s){extra}")
        spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
        print(f"{name:12s} mean {100 * statistics.mean(accs):.2f} % +- {100 * spread:.2f}")


if __name__ == "__main__":
    main()
