"""Presentation schedules (dendrite_sim.schedule): gates per phase, breakpoints, validation."""
import pytest
import torch

from dendrite_sim.models import Mixture, TwoPhaseDTP
from dendrite_sim.schedule import GATE_NAMES, Phase, Schedule


def test_two_phase_gates_per_phase():
    s = Schedule.two_phase(3.0, 2.0)
    assert s.names == ("free", "learn")
    assert s.duration == 5.0
    assert s.breakpoints == (3.0,)
    assert s.boundaries == (0.0, 3.0, 5.0)
    free = {"teach": 0.0, "plastic_W": 0.0, "plastic_Q": 1.0, "trace": 1.0}
    learn = {"teach": 1.0, "plastic_W": 1.0, "plastic_Q": 0.0, "trace": 0.0}
    for t in (0.0, 1.5, 2.999999):
        assert s.gates(t) == free
        assert s.phase_at(t).name == "free"
    for t in (3.0, 4.0, 5.0, 7.0):  # phases are [start, end); the last one holds afterwards
        assert s.gates(t) == learn
        assert s.phase_at(t).name == "learn"
    assert s.gates(-1.0) == free
    assert set(s.gates(0.0)) == set(GATE_NAMES)


def test_gates_accept_float_and_0d_tensor():
    s = Schedule.two_phase(1.0, 1.0, sleep=0.5)
    for t, name in ((0.25, "free"), (1.25, "learn"), (2.25, "sleep")):
        for tt in (t, torch.tensor(t), torch.tensor(t, dtype=torch.float64)):
            assert s(tt) == s.phases[s.names.index(name)].gates
            assert s.phase_at(tt).name == name
    sleep = s.phases[2].gates
    assert sleep == {"teach": 0.0, "plastic_W": 0.0, "plastic_Q": 1.0,
                     "trace": 0.0}
    assert s.breakpoints == (1.0, 2.0)
    # the dict is fresh: callers may modify it
    s.gates(0.1)["teach"] = 5.0
    assert s.gates(0.1)["teach"] == 0.0


def test_single_phase_and_default_schedules():
    s = Schedule.single_phase(4.0)
    assert len(s) == 1 and s.breakpoints == () and s.duration == 4.0
    assert s.gates(2.0) == {"teach": 1.0, "plastic_W": 1.0, "plastic_Q": 1.0,
                            "trace": 0.0}
    mix = Mixture([2, 3, 2], mu=0.1, tau=0.5, feedback="learned")
    assert mix.default_schedule().duration == pytest.approx(10.0)
    assert mix.default_schedule(3.0).duration == 3.0
    tp = TwoPhaseDTP([2, 3, 2], tau=0.5, trace_tau=2.0)
    d = tp.default_schedule()
    assert d.names == ("free", "learn") and d.boundaries == (0.0, 40.0, 80.0)
    assert tp.default_schedule(T_free=1.0, T_learn=2.0, sleep=3.0).boundaries == \
        (0.0, 1.0, 3.0, 6.0)


def test_custom_phases_and_breakpoints():
    s = Schedule([Phase("a", 0.5, teach=True, plastic="W"), Phase("b", 1.5, plastic=("W", "Q")),
                  Phase("c", 1.0, trace=True)])
    assert s.breakpoints == (0.5, 2.0)
    assert s.gates(0.1)["teach"] == 1.0 and s.gates(0.1)["plastic_Q"] == 0.0
    assert s.gates(1.0)["plastic_Q"] == 1.0 and s.gates(1.0)["plastic_W"] == 1.0
    assert s.gates(2.5) == {"teach": 0.0, "plastic_W": 0.0,
                            "plastic_Q": 0.0, "trace": 1.0}
    assert s.plastic_anywhere("Q") and s.plastic_anywhere("W")
    assert "a: 0.5" in repr(s)


@pytest.mark.parametrize("kwargs, word", [
    (dict(name="x", duration=0.0), "duration"),
    (dict(name="x", duration=-1.0), "duration"),
    (dict(name="x", duration=float("inf")), "duration"),
    (dict(name="x", duration="long"), "duration"),
    (dict(name="", duration=1.0), "name"),
    (dict(name="x", duration=1.0, plastic=("not a name",)), "plastic"),
    (dict(name="x", duration=1.0, plastic=(3,)), "plastic"),
    (dict(name="x", duration=1.0, extra_gates={"teach": 1.0}), "extra_gates"),
    (dict(name="x", duration=1.0, extra_gates={"gamma": "high"}), "gamma"),
    (dict(name="x", duration=1.0, teach=2), "teach"),
    (dict(name="x", duration=1.0, trace="yes"), "trace"),
])
def test_phase_validation(kwargs, word):
    with pytest.raises((ValueError, TypeError), match=word):
        Phase(**kwargs)


def test_schedule_validation():
    with pytest.raises(ValueError, match="phases"):
        Schedule([])
    with pytest.raises(ValueError, match="phases"):
        Schedule([Phase("a", 1.0), Phase("a", 2.0)])
    with pytest.raises(ValueError, match="phases"):
        Schedule([("a", 1.0)])
    with pytest.raises(ValueError, match="T_free"):
        Schedule.two_phase(-1.0, 1.0)
    with pytest.raises(ValueError, match="T_learn"):
        Schedule.two_phase(1.0, 0.0)
    with pytest.raises(ValueError, match="sleep"):
        Schedule.two_phase(1.0, 1.0, sleep=-2.0)
    with pytest.raises(ValueError, match="duration"):
        Schedule.single_phase(0.0)
    with pytest.raises(ValueError, match="t"):
        Schedule.single_phase(1.0).gates(float("nan"))


def test_check_model_requires_a_learning_phase():
    model = TwoPhaseDTP([2, 3, 2])
    sleep_only = Schedule([Phase("sleep", 1.0, plastic=("Q",))])
    with pytest.raises(ValueError, match="schedule"):
        sleep_only.check_model(model)
    assert sleep_only.check_model(model, require_plastic=()) is sleep_only
    Schedule.two_phase(1.0, 1.0).check_model(model)
    for group, hint in (("V", "plastic groups"), ("b", "biases follow 'W'")):
        with pytest.raises(ValueError, match=hint):
            Schedule([Phase("x", 1.0, plastic=("W", group))]).check_model(model)


def test_waveform_gates_and_breakpoints():
    """A waveform gate is read at the time since its phase began; its breakpoints join the
    phase boundaries."""
    from dendrite_sim.dynamics.gates import Waveform
    square = Waveform(lambda s: 1.0 if s < 0.5 else 0.25, breakpoints=(0.5, 7.0), name="sq")
    s = Schedule([Phase("a", 1.0, teach=True, plastic="W"),
                  Phase("b", 2.0, extra_gates={"gamma": square, "beta": 0.5})])
    assert s.breakpoints == (1.0, 1.5)          # 7.0 lies beyond the phase
    assert s.gates(1.25)["gamma"] == 1.0 and s.gates(1.75)["gamma"] == 0.25
    assert s.gates(1.75)["beta"] == 0.5 and "gamma" not in s.gates(0.5)
    assert s.phases[1].time_varying and not s.phases[0].time_varying
    with pytest.raises(ValueError, match="breakpoints"):
        Waveform(lambda s: 1.0, breakpoints=(2.0, 1.0))
