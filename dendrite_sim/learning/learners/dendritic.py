"""Learning by presenting each mini-batch to the dynamical network."""

from __future__ import annotations

from dendrite_sim.dynamics.teaching import Nudge, _check_loss
from dendrite_sim.errors import check_bool, check_range
from dendrite_sim.families.mixing import MU_WARN
from dendrite_sim.learning.presentation import MODES
from . import register_learner
from .base import Learner, _jsonable_scalar_or_list


#: what training does with a presentation whose equilibria did not converge
UNCONVERGED = ("stop", "skip", "continue")


@register_learner("dendritic")
class DendriticLearner(Learner):
    """Learning by presenting each mini-batch to the dynamical network.

    Parameters
    ----------
    model : a network model with plasticity (``Mixture``, ``TwoPhaseDTP``, ...); its
        parameters are updated in place (``model.params`` lists).
    schedule : a :class:`dendrite_sim.learning.schedule.Schedule`; default ``model.default_schedule()``.
    mode : ``"quasi_static"`` or ``"coupled"`` (see :func:`dendrite_sim.learning.present`).
    loss : ``"cross_entropy"`` or ``"mse"``: the loss of the output nudge.
    eta_hat : output step size of ``Nudge(y, loss, eta_hat)``, > 0.
    present_kwargs : extra keyword arguments for ``present`` (tolerances, ...); for coupled
        training ``{"method": "etdrk4", "step_size": 3 * tau}`` is ~8x faster than the
        default dopri5, at float32's own error (``present``'s docstring; CLI: ``--set
        solver.method=etdrk4 --set solver.step_size=3``).
    fixed_point_kwargs : extra keyword arguments for the ``fixed_point`` of :meth:`predict`.
    transient : quasi-static training with the first-order correction for the activity's
        transient at the start of each phase (default; ``present(..., transient=True)``:
        within 1 % of coupled mode's weight changes per layer as the rates go to 0, at about
        1.5-2x the cost of a plain epoch); ``False`` (``learner.transient = false`` in a
        configuration) gives the plain Euler step at each phase's equilibrium (6-22 % from
        coupled mode per layer at 20-tau phases: docs/derivations.md §10).
    drift_lag : also end each phase as far behind the end equilibrium as the state trails
        the equilibrium drifting with the weights (``present(..., drift_lag=True)``, first
        order in the rates; docs/derivations.md §10). Default ``False``: at training rates
        this first-order term is not small -- for two-phase DTP at ``eta_inv = 1e-3`` the
        trace's lag behind the free state moves the layer-1 signal by half of it, and the
        digits network's ``W_2`` runs away in the first epoch with it.
    on_unconverged : a presentation whose equilibria did not converge (quasi-static mode)
        ``"stop"`` training with the reason (default), is ``"skip"``-ped (weights unchanged)
        or is applied anyway (``"continue"``); each is counted in
        ``unconverged_presentations``.
    """

    #: has neural dynamics: equilibria, reconstruction errors and spectra are diagnosed
    dynamic = True

    def __init__(self, model, schedule=None, mode="quasi_static", loss="cross_entropy",
                 eta_hat=0.1, present_kwargs=None, fixed_point_kwargs=None, transient=True,
                 drift_lag=False, on_unconverged="stop"):
        if mode not in MODES or mode not in model.presentation_modes:
            raise ValueError(f"mode must be one of {list(model.presentation_modes)} for "
                             f"{type(model).__name__}; got {mode!r}")
        self.eta_hat = check_range("eta_hat", eta_hat, low=0.0, low_open=True)
        self.loss_name = _check_loss(loss)
        self.model, self.mode = model, mode
        self.schedule = model.default_schedule() if schedule is None else schedule
        self.forward_names = tuple(model.forward_params) or tuple(model.plastic_params)
        self.sizes, self.dtype, self.device = list(model.sizes), model.dtype, model.device
        self.present_kwargs = {"transient": check_bool("transient", transient),
                               "drift_lag": check_bool("drift_lag", drift_lag),
                               **(present_kwargs or {})}
        self.fixed_point_kwargs = dict(fixed_point_kwargs or {})
        if on_unconverged not in UNCONVERGED:
            raise ValueError(f"on_unconverged must be one of {list(UNCONVERGED)}; got "
                             f"{on_unconverged!r}")
        self.on_unconverged = on_unconverged
        self.unconverged = 0  # free equilibria of predict() that did not converge
        self.unconverged_presentations = 0  # presentations with an unconverged phase

    @property
    def params(self) -> dict:
        return self.model.params

    def teaching(self, y) -> Nudge:
        return Nudge(self._target(y), self.loss_name, self.eta_hat)

    def free_equilibrium(self, x):
        from dendrite_sim.dynamics.equilibrium import fixed_point
        eq = fixed_point(self.model, x, None, **self.fixed_point_kwargs)
        self.unconverged += int((~eq.converged).sum())
        return eq

    def predict(self, x):
        """The output (``model.output``) at the free equilibrium."""
        return self.model.output(self.free_equilibrium(x).y)

    def propose(self, x, y):
        from dendrite_sim.learning.presentation import present
        kwargs = {"end_state": False, **self.present_kwargs}   # only the weights are kept
        pres = present(self.model, x, self.teaching(y), self.schedule, mode=self.mode,
                       params=self.model.params, **kwargs)
        new = {n: [None if p is None else p.detach() for p in pres.params[n]]
               for n in self.model.params}
        converged = bool(pres.converged)
        self.unconverged_presentations += int(not converged)
        return new, {"sim_time": float(pres.sim_time), "nfev": int(pres.nfev),
                     "converged": converged, "residual": float(pres.residual),
                     "failure": pres.failure}

    def failure_hints(self, x, y) -> list[str]:
        """Causes found by looking: ``mu`` close to 0.5, a nudged output target outside the
        output transfer's inverse domain (at the feed-forward output), and coupled mode (whose
        learning phase runs away at training rates, docs/derivations.md §4)."""
        hints = []
        if self.mode == "coupled":
            hints.append("coupled mode integrates the weights with the activity, and at rates "
                         "that learn in a few epochs the learning phase is a positive feedback "
                         "that runs away (docs/derivations.md §4): lower the model's rates (eta, "
                         "eta_inv) or train with mode 'quasi_static'")
        mu = self.config()["model_hyper"].get("mu")
        if isinstance(mu, float) and mu > MU_WARN:
            hints.append(f"mu = {mu:g} is close to 0.5 (equilibria ill-conditioned)")
        transfers = self.model.layer_transfers
        if transfers is not None and self.model.forward_params:
            low, high = transfers[-1].inverse_domain
            target = self.teaching(y).output_target(self.model.forward(self.model.params, x))
            outside = transfers[-1].outside_inverse_domain(target)
            if bool(outside.any()):
                worst = float(target[outside].abs().max())
                hints.append(f"the nudged output target leaves the output transfer's inverse "
                             f"domain ({low}, {high}) (|target| up to {worst:.3g} in "
                             f"{int(outside.any(-1).sum())} of {x.shape[0]} examples): lower "
                             f"eta_hat (now {self.eta_hat:g})")
        return hints

    def commit(self, new):
        for n, values in new.items():
            current = self.model.params[n]
            for k, p in enumerate(values):
                current[k] = p

    def config(self) -> dict:
        model = self.model
        hyper = {k: v for k, v in vars(model).items()
                 if not k.startswith("_") and _jsonable_scalar_or_list(v)}
        if model.layer_transfers is not None:
            hyper.update(transfers=[repr(t) for t in model.layer_transfers])
        return {"learner": "dendritic", "model": type(model).__name__, "sizes": self.sizes,
                "mode": self.mode, "loss": self.loss_name, "eta_hat": self.eta_hat,
                "transient": self.present_kwargs["transient"],
                "drift_lag": self.present_kwargs["drift_lag"],
                "schedule": repr(self.schedule), "model_hyper": hyper}
