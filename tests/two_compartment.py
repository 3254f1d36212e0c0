"""A network model outside the mixing family, written only against the model contract
(``dendrite_sim.dynamics.model.NetworkModel``): two compartments per neuron with their own time
constants, an output that is a function of a compartment, no bias, a plastic matrix ``A``::

    tau_v dv_i/dt = -v_i + A_i r_{i-1}                (dendritic voltage; r_0 = input_gain(t) x)
    tau_r dr_i/dt = -r_i + tanh(v_i)                        (rate, i < L)
    tau_r dr_L/dt = -r_L + target(tanh(v_L))                (teaching on the top rate)
    dA_i/dt = eta plastic_A(t) <(r_i - tanh v_i) (1 - tanh^2 v_i) r_{i-1}^T>

Its output is ``tanh(v_L)``; with no teaching its equilibrium is the forward map
``tanh(A_L ... tanh(A_1 x))``.
"""
import torch

from dendrite_sim.dynamics.layout import Layout
from dendrite_sim.dynamics.model import NetworkModel


class TwoCompartment(NetworkModel):
    activity = "r"
    plastic_groups = {"A": ("A",)}
    gates = {"teach": 1.0, "plastic_A": 1.0, "input_gain": 1.0}
    forward_params = ("A",)

    def __init__(self, sizes, tau_v=0.5, tau_r=2.0, eta=0.5, seed=0, dtype=torch.float64):
        self.sizes, self.dtype, self.device = list(sizes), dtype, torch.device("cpu")
        self.tau_v, self.tau_r, self.eta = tau_v, tau_r, eta
        self.layout = Layout({"v": self.sizes[1:], "r": self.sizes[1:]})
        gen = torch.Generator().manual_seed(seed)
        self.params = {"A": [torch.randn(m, n, generator=gen, dtype=dtype) / n ** 0.5
                             for n, m in zip(self.sizes[:-1], self.sizes[1:])]}

    @property
    def time_constants(self):
        return {"v": self.tau_v, "r": self.tau_r}

    def _drives(self, y, drive, params, t=0.0):
        parts = self.layout.unpack(y)
        below = [drive.gate("input_gain", t) * drive.x] + parts["r"][:-1]
        return parts, [r @ a.T for r, a in zip(below, params["A"])], below

    def field(self, t, y, drive, prepared):
        parts, basal, _ = self._drives(y, drive, prepared, t)
        rates = [torch.tanh(v) for v in parts["v"]]
        rates[-1] = drive.teaching.output_target(rates[-1], drive.gate("teach", t))
        dv = [(b - v) / self.tau_v for b, v in zip(basal, parts["v"])]
        dr = [(s - r) / self.tau_r for s, r in zip(rates, parts["r"])]
        return torch.cat(dv + dr, dim=-1)

    def plasticity(self, t, y, drive, prepared):
        parts, _, below = self._drives(y, drive, prepared, t)
        scale = self.eta * drive.gate("plastic_A", t) / drive.batch_size
        return {"A": [scale * ((r - torch.tanh(v)) * (1 - torch.tanh(v) ** 2)).T @ h
                      for v, r, h in zip(parts["v"], parts["r"], below)]}

    def initial_state(self, drive, prepared):
        return torch.zeros(drive.batch_size, self.state_size, dtype=self.dtype)

    def output(self, y):
        return torch.tanh(self.layout.unpack(y)["v"][-1])

    def forward(self, params, x):
        for a in params["A"]:
            x = torch.tanh(x @ a.T)
        return x
