"""The command line: the README's main job (with fewer epochs and examples), figures, plot,
compare, analyze, simulate, configs, and one-line errors."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dendrite_sim.cli import main
from dendrite_sim.config import (ConfigError, default_config_path, learner_options,
                                 load_config, model_names, validate_config)

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"
# the README's main job, reduced: one epoch on the first 96 training / 60 test digits
REDUCED = ["--set", "training.epochs=1", "--set", "data.max_train=96",
           "--set", "data.max_test=60"]
RUN_FIGURES = ("learning_curves.png", "learning_curves_vs_backprop.png", "alignment.png",
               "diagnostics.png", "activity.png", "spectrum.png")


def cli_command():
    exe = shutil.which("dendrite-sim")
    return [exe] if exe else [sys.executable, "-m", "dendrite_sim"]


def readme_command(prefix: str) -> str:
    """The first line of the README's fenced commands that contains ``prefix``."""
    for line in (ROOT / "README.md").read_text().splitlines():
        if prefix in line:
            return line.strip()
    raise AssertionError(f"README has no line with {prefix!r}")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    result = subprocess.run(cli_command() + ["run", "two_phase", *REDUCED, "--out", str(out)],
                            capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, MPLBACKEND="Agg"))
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def assert_png(path: Path):
    assert path.is_file(), f"missing {path}"
    data = path.read_bytes()
    assert data[:8] == PNG and len(data) > 2000, path


def assert_one_line_error(err: str, *needles):
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("dendrite-sim: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, err)


# -- the main job ----------------------------------------------------------------------------
def test_readme_runs_the_main_job():
    line = readme_command("dendrite-sim run")
    assert "dendrite-sim run two_phase" in line and "pip install" in line


def test_run_directory_is_complete(run_dir):
    out, result = run_dir
    cfg = tomllib.loads((out / "config.toml").read_text())
    assert validate_config(cfg) == cfg                       # resolved: every default filled
    assert cfg["model"]["name"] == "two_phase" and cfg["training"]["epochs"] == 1
    lines = (out / "environment.jsonl").read_text().splitlines()
    env = json.loads(lines[-1])                               # one line per start
    assert len(lines) == 1 and env["action"] == "new"
    for key in ("python", "torch", "numpy", "torchdiffeq", "device"):
        assert env[key], key
    for learner in (out, out / "backprop"):
        with np.load(learner / "trajectory.npz") as z:
            for key in ("examples", "train_loss", "test_loss", "test_accuracy", "sim_time",
                        "diag_cos_bp"):
                assert key in z.files, key
            assert len(z["test_accuracy"]) >= 2 and np.isfinite(z["test_accuracy"]).all()
        summary = json.loads((learner / "summary.json").read_text())
        assert summary["complete"] and 0.0 <= summary["final"]["test_accuracy"] <= 1.0
        assert (learner / "checkpoint.pt").stat().st_size > 0
    for name in RUN_FIGURES:
        assert_png(out / "figures" / name)
    assert "test accuracy: dendritic" in result.stdout and "vs backprop" in result.stdout
    assert str(out / "figures") in result.stdout


def test_run_refuses_to_overwrite_a_run(run_dir, capsys):
    out, _ = run_dir
    assert main(["run", "two_phase", *REDUCED, "--out", str(out), "--quiet"]) == 2
    assert_one_line_error(capsys.readouterr().err, "--resume", "--overwrite")


def test_plot_regenerates_every_figure(run_dir, capsys):
    out, _ = run_dir
    shutil.rmtree(out / "figures")
    assert main(["plot", str(out)]) == 0
    for name in RUN_FIGURES:
        assert_png(out / "figures" / name)
    assert "wrote" in capsys.readouterr().out


def test_compare_makes_a_markdown_table(run_dir, tmp_path, capsys):
    out, _ = run_dir
    table_file = tmp_path / "table.md"
    assert main(["compare", str(out), "--out", str(table_file)]) == 0
    printed = capsys.readouterr().out
    rows = [line for line in table_file.read_text().splitlines() if line.startswith("|")]
    assert rows[0].startswith("| run | model | learner") and len(rows) == 4   # head, rule, 2
    assert "dendritic (quasi_static)" in rows[2] and "backprop" in rows[3]
    assert "two_phase" in rows[2] and "%" in rows[2]
    assert rows[0] in printed


def test_simulate_from_a_run_directory(run_dir, tmp_path, capsys):
    out, _ = run_dir
    assert main(["simulate", str(out), "--out", str(tmp_path)]) == 0
    assert_png(tmp_path / "activity.png")
    with np.load(tmp_path / "simulation.npz") as z:
        assert z["y"].shape[0] == z["t"].shape[0]
    text = capsys.readouterr().out
    assert "trained weights" in text and "'free'" in text and "'learn'" in text


# -- analyze and simulate --------------------------------------------------------------------
def test_analyze_with_a_mu_sweep(tmp_path, capsys):
    assert main(["analyze", "mixture", "--sweep", "mu", "--values", "0.1:0.45:4",
                 "--set", "output.examples=2", "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "all equilibria locally stable" in text
    assert "continuation in mu: 4 values" in text
    assert_png(tmp_path / "spectrum.png")
    assert_png(tmp_path / "continuation_mu.png")


def test_analyze_feedback_gain_sweep_with_nudge(tmp_path, capsys):
    assert main(["analyze", "two_phase", "--sweep", "feedback_gain", "--values", "0.5,1.0",
                 "--teaching", "nudge", "--set", "output.examples=1",
                 "--out", str(tmp_path)]) == 0
    assert "continuation in feedback_gain: 2 values" in capsys.readouterr().out
    assert_png(tmp_path / "continuation_feedback_gain.png")


def test_simulate_writes_the_activity_plot(tmp_path, capsys):
    assert main(["simulate", "mixture", "--out", str(tmp_path)]) == 0
    assert_png(tmp_path / "activity.png")
    assert "initial weights" in capsys.readouterr().out


# -- configurations --------------------------------------------------------------------------
@pytest.mark.parametrize("name", model_names())
def test_every_model_has_a_valid_default_config(name):
    assert default_config_path(name) is not None, f"configs/{name}.toml is missing"
    cfg = load_config(name)
    assert cfg["model"]["name"] == name
    assert validate_config(cfg) == cfg


def test_config_command_prints_resolved_toml(capsys):
    assert main(["config", "two_phase", "--set", "model.mu=0.25",
                 "--set", "model.sizes=[64, 20, 10]"]) == 0
    cfg = tomllib.loads(capsys.readouterr().out)
    assert cfg["model"]["mu"] == 0.25 and cfg["model"]["sizes"] == [64, 20, 10]


@pytest.mark.parametrize("name", model_names())
def test_printed_config_names_every_known_key(name, capsys):
    """Every key of every section is either given a value or listed as a comment saying it is
    not set; the text is valid TOML that validates to the same configuration."""
    from dendrite_sim.frontend.config import (OUTPUT, SOLVER, TRAINING, _data_schema,
                                              _model_schema, model_class)
    assert main(["config", name]) == 0
    text = capsys.readouterr().out
    cfg = load_config(name)
    assert validate_config(tomllib.loads(text)) == cfg
    known = {"model": _model_schema(model_class(name)), "training": TRAINING,
             "solver": SOLVER, "data": _data_schema(cfg["data"]["name"]),
             "output": {k: v for k, v in OUTPUT.items() if k != "dir"}}
    for section, schema in known.items():
        for key in schema:
            if key != "name":
                assert key in cfg[section] or f"# {key}: not set (" in text, f"{section}.{key}"


def test_every_string_is_written_as_valid_toml():
    from dendrite_sim.frontend.config import dumps_toml
    every_char = "".join(map(chr, range(0x80))) + "é∑\u2028"
    table = {"model": {"transfer": every_char, every_char: 1}}
    assert tomllib.loads(dumps_toml(table)) == table


def test_set_values_are_toml_literals_and_bare_words():
    cfg = load_config("two_phase", ["training.eta_hat=0.5", "data.name=mnist1d",
                                    "data.n_train=100", 'training.loss="mse"',
                                    "training.baseline=false"])
    assert cfg["training"]["eta_hat"] == 0.5 and cfg["data"]["name"] == "mnist1d"
    assert cfg["data"]["n_train"] == 100 and cfg["training"]["loss"] == "mse"
    assert cfg["training"]["baseline"] is False


def test_solver_section_splits_by_training_mode():
    from dendrite_sim.dynamics.integrators import Integrator
    """Equilibrium settings go to quasi-static presentations, integrator settings to coupled
    ones; ``fixed_point`` gets the equilibrium tolerance either way."""
    solver = ["solver.tol=1e-6", "solver.rate_tol=1e-4", "solver.method=heun3",
              "solver.step_size=1.0"]
    quasi, fixed = learner_options(load_config("two_phase", solver))
    assert quasi == {"tol": 1e-6, "rate_tol": 1e-4, "max_iter": 50} and fixed["tol"] == 1e-6
    coupled, _ = learner_options(load_config("two_phase", solver + ["training.mode=coupled"]))
    assert coupled == {"integrator": Integrator("heun3", 1e-6, 1e-8, step_size=1.0)}


@pytest.mark.parametrize("override, key", [
    ("training.epochs=abc", "training.epochs"),
    ("training.epochs=1.5", "training.epochs"),
    ("model.mu=true", "model.mu"),
    ("model.sizes=[64, 'a']", "model.sizes"),
    ("solver.rtol=[1]", "solver.rtol"),
])
def test_wrong_types_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config("two_phase", [override])


# -- errors: one line, exit status 2, no traceback -------------------------------------------
@pytest.mark.parametrize("argv, needles", [
    (["run", "no_such_model"], ["unknown model 'no_such_model'", "two_phase"]),
    (["run", "two_phase", "--set", "training.epochz=3"], ["training.epochz"]),
    (["run", "two_phase", "--set", "training.epochs=abc"], ["training.epochs", "integer"]),
    (["run", "two_phase", "--set", "data.name=mnist", "--set", "data.path=/no/such/dir"],
     ["/no/such/dir"]),
    (["run", "two_phase", "--set", "data.name=mnist"], ["data.path"]),
    (["run", "two_phase", "--set", "nosection.a=1"], ["nosection"]),
    (["run", "two_phase", "--set", "model.mu=0.7", "--quiet"], ["mu"]),
    (["run", "/no/such/config.toml"], ["/no/such/config.toml"]),
    (["analyze", "mixture", "--sweep", "mu", "--values", "1:2"], ["--values"]),
    (["plot", "/no/such/run"], ["/no/such/run"]),
    (["compare", "/no/such/run"], ["/no/such/run"]),
    (["run"], ["MODEL_OR_CONFIG"]),
    (["frobnicate"], ["frobnicate"]),
])
def test_errors_print_one_line_and_exit_2(argv, needles, capsys):
    with_exit = None
    try:
        code = main(argv)
    except SystemExit as exit_:          # argparse usage errors
        code = with_exit = exit_.code
    assert code == 2, with_exit
    assert_one_line_error(capsys.readouterr().err, *needles)


@pytest.mark.parametrize("sweep, values, needles", [
    ("nu", "0.05:0.45:5", ["--sweep nu", "not a scalar hyper-parameter of TwoPhaseDTP",
                           "eta_inv", "mu"]),
    ("mu", "0.05:0.7:5", ["--sweep mu", "mu = 0.5375 is not allowed", "(0.0, 0.5)"]),
])
def test_analyze_rejects_a_bad_sweep_before_solving(sweep, values, needles, tmp_path, capsys,
                                                    monkeypatch):
    import dendrite_sim.dynamics.equilibrium as equilibrium

    def must_not_solve(*args, **kwargs):
        raise AssertionError("the equilibrium was solved before the sweep was checked")

    monkeypatch.setattr(equilibrium, "fixed_point", must_not_solve)
    out = tmp_path / "an"
    assert main(["analyze", "two_phase", "--sweep", sweep, "--values", values,
                 "--out", str(out)]) == 2
    assert_one_line_error(capsys.readouterr().err, *needles)
    assert not out.exists()


def test_error_from_the_console_entry_point_has_no_traceback():
    result = subprocess.run(cli_command() + ["run", "no_such_model"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "no_such_model")


@pytest.mark.parametrize("command", [[], ["run"], ["sweep"], ["simulate"], ["analyze"], ["compare"],
                                     ["plot"], ["config"], ["models"]])
def test_help_on_every_subcommand(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(command + ["--help"])
    assert exit_.value.code == 0
    assert "usage: dendrite-sim" in capsys.readouterr().out


def test_ci_script_runs_the_readme_test_command():
    line = readme_command("pytest")
    ci = (ROOT / ".ci" / "run").read_text()
    assert "set -euo pipefail" in ci
    for command in line.split(" && "):
        assert command.strip() in ci, command


def _torch_loading(pid: int) -> bool:
    try:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("stage", ["importing torch", "training"])
def test_ctrl_c_ends_with_one_line(tmp_path, stage):
    """SIGINT while torch imports or while training: exit status 130 and one line on stderr,
    never a traceback. (The signal is sent once the stage is seen to have begun: before the
    interpreter has imported its own site module, no program can catch it.)"""
    import signal
    import subprocess
    import sys
    import time
    # a shell that starts pytest in the background (``cmd &``) leaves SIGINT ignored, and an
    # ignored signal is inherited: the program is started with the default disposition
    proc = subprocess.Popen([sys.executable, "-m", "dendrite_sim", "run", "two_phase", "--out",
                             str(tmp_path / "run")], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    begun = (lambda: _torch_loading(proc.pid)) if stage == "importing torch" else \
        (lambda: (tmp_path / "run" / "config.toml").exists())
    deadline = time.monotonic() + 120
    while not begun() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and err.strip().endswith("dendrite-sim: interrupted")
