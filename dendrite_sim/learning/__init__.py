"""Learning: presentations of a schedule, learners, the training loop, diagnostics and run
records.

Layout: ``schedule`` (phases and gates), ``presentation`` (:func:`present`, quasi-static and
coupled), ``learners/`` (one file per learner, :class:`Learner` and its registry),
``diagnostics``, ``history`` (records in memory and on disk), ``loop`` (:func:`train`).

Learners
--------
Every learner follows one protocol::

    info = learner.step(x, y)      # one mini-batch update; returns a dict (sim_time, nfev, ...)
    learner.step(x, y, optimizer=Adam(lr=1e-3))   # the proposed change through an update rule
    out = learner.predict(x)       # (B, n_L) network output
    value = learner.loss(x, y)     # mean loss over the batch
    learner.params                 # {"W": [...], "b": [...], ...} (list index i-1 = layer i)
    learner.state_dict() / learner.load_state_dict(d)

``y`` is ``(B,)`` int64 class labels (classification) or ``(B, n_L)`` float targets
(regression). Losses are those of :mod:`dendrite_sim.dynamics.teaching`, per example and summed over
output units, averaged over the batch: ``cross_entropy`` (labels become one-hot) or
``mse`` = ``1/2 ||h_L - y||^2`` (labels become one-hot targets).

* :class:`DendriticLearner` shows each mini-batch to a network model through
  :func:`dendrite_sim.learning.present` with the teaching signal ``Nudge(y, loss, eta_hat)``
  and keeps the weights the presentation ends with. Its prediction is the output of the *free*
  equilibrium (``fixed_point`` with no teaching; with exact inverses that is the forward pass).
* :class:`BackpropLearner` is the baseline: the same architecture (``model.pathways``), the
  same initial ``W, b`` (copied), the output ``f_L(...f_1(x))`` of the forward pass, trained by
  plain SGD on the same batch-mean loss with autograd.

Update rules (:mod:`~dendrite_sim.learning.optimizers`: ``SGD``, ``Momentum``, ``Adam``) turn
any learner's proposed change into the step it takes: ``train(..., optimizer="adam")``, the
same rule (a fresh one, with its own state) for the learner and its baselines.

Diagnostics (docs/design.md)
---------------------
Every ``diagnostics_every`` batches :func:`train` takes a *trial* update of the learner on a
fixed probe batch of training examples (the update the learner would make from its current
weights, not applied) and records per layer ``i = 1..L`` (arrays ``(n_samples, L)``; ``NaN``
where a quantity does not exist):

``dW_norm``        ``||Delta theta_i||`` of the trial update, ``theta_i = (W_i, b_i)`` flattened.
``step_dW_norm``   ``||Delta theta_i||`` of the training step actually taken at that batch.
``cos_bp``         cosine between ``Delta theta_i`` and ``-dLoss/dtheta_i``, the backprop
                   gradient of the batch-mean loss of the forward pass at the same weights
                   (autograd).
``cos_gn``         cosine between ``Delta theta_i`` and the Gauss–Newton (target propagation)
                   direction (:func:`gauss_newton_direction`; exact GN where the layers above
                   are square and invertible, layer-wise pseudo-inverses where they contract).
``recon_error``    batch mean of ``||g_i(f_{i+1}(h_i)) - h_i||`` at the free equilibrium
                   (``i < L``; feedback maps only; ~0 for exact inverses).
``q_distance``     ``||Q_i - W_{i+1}^+||_F / ||W_{i+1}^+||_F`` (learned feedback only).
``useful_signal``  batch mean of ``||d^n_i - d^f_i||``, ``d_i = h_i - f_i(h_{i-1})`` the
                   deviation from the forward map at the nudged (``n``, teaching
                   ``Nudge(y, loss, eta_hat)``) and free (``f``) equilibria: the learning
                   signal.
``recon_deviation`` batch mean of ``||d^f_i||``: what reconstruction errors alone put there.

and per sample ``max_real_eig``: the largest real part of the eigenvalues of the Jacobian of
the activity block (``d(dh/dt)/dh``; slow memory traces such as two-phase DTP's ``z`` feed
nothing back, so the full Jacobian is block triangular and these are its neural eigenvalues) at
the free equilibrium, maximised over the first ``n_eig`` probe examples.

Runs on disk
------------
With ``out_dir``, :func:`train` commits, at every evaluation, one position in three files,
each atomically (temporary file in the same directory, then ``os.replace``) and in this order:
``checkpoint.pt`` (learner state, shuffling RNG state, position, history: the source of truth),
``trajectory.npz`` (every recorded array but the wall times; the same bytes for the same seed
and configuration on one device) and ``summary.json`` (``complete``, final metrics,
configuration, and the wall times). Each says its position: ``checkpoint["step"]``,
``trajectory["batches"][-1]`` and ``summary["timing"]["batches"]``; a process killed between
the writes leaves the last two one position behind the checkpoint, and ``resume=True``
rewrites them from it and removes the temporary files left behind. A resumed run gives the
same history and weights as an uninterrupted one (wall-clock times aside).
"""
from __future__ import annotations

from .diagnostics import (LAYER_DIAGNOSTICS, SCALAR_DIAGNOSTICS, gauss_newton_direction,
                          layer_diagnostics)
from .history import History
from .learners.backprop import BackpropLearner, backprop_gradient, forward_layers
from .learners.base import Learner, loss_target
from .learners.dendritic import DendriticLearner
from .loop import train
from .optimizers import SGD, Adam, Momentum, UpdateRule
from .presentation import MODES, Frozen, Presentation, frozen_variables, present
from .schedule import Phase, Schedule

__all__ = ["present", "Presentation", "Frozen", "frozen_variables", "MODES", "Phase",
           "Schedule", "Learner", "DendriticLearner", "BackpropLearner", "train", "History",
           "layer_diagnostics", "backprop_gradient", "gauss_newton_direction",
           "forward_layers", "loss_target", "LAYER_DIAGNOSTICS", "SCALAR_DIAGNOSTICS",
           "UpdateRule", "SGD", "Momentum", "Adam"]
