"""Each script in examples/ runs to completion on CPU and writes its figure."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = {
    "mixture.py": "mixture.png",
    "two_phase.py": "two_phase.png",
    "equilibrium_spectrum.py": "equilibrium_spectrum.png",
    "stability_sweep.py": "stability_sweep.png",
    "learning_signals.py": "learning_signals.png",
    "multiplexing.py": "multiplexing.png",
    "cdtp.py": "cdtp.png",
    "thesis_toy.py": "thesis_toy.png",
    "thesis_inverse_learning.py": "thesis_inverse_learning.png",
    "thesis_teacher_student_exact.py": "thesis_teacher_student_exact.png",
    "thesis_teacher_student_approx.py": "thesis_teacher_student_approx.png",
}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_every_example_is_covered():
    scripts = {p.name for p in (ROOT / "examples").glob("*.py")}
    assert scripts == set(EXAMPLES)


@pytest.mark.parametrize("script", sorted(EXAMPLES))
def test_example_runs_and_writes_its_figure(script, tmp_path):
    env = dict(os.environ, DENDRITE_SIM_FIGURES=str(tmp_path), MPLBACKEND="Agg")
    result = subprocess.run([sys.executable, str(ROOT / "examples" / script)], env=env,
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    png = tmp_path / EXAMPLES[script]
    assert png.is_file(), f"{script} did not write {png.name}: {result.stdout[-2000:]}"
    assert png.read_bytes()[:8] == PNG_SIGNATURE and png.stat().st_size > 5000
