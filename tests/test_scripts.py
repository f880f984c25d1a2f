"""Every command-line script the README names starts and answers --help, and the loader
benchmark runs (a script that cannot import is worse than none)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import load_script

ROOT = Path(__file__).resolve().parents[1]


def scripts_named_in_the_readme() -> list[str]:
    """The scripts the README runs (``python train.py``, ``bash scripts/x.sh``) and the files
    of ``scripts/`` it names anywhere (its layout lists them)."""
    text = (ROOT / "README.md").read_text()
    run = set(re.findall(r"(?:python|bash) ((?:scripts/)?\w+\.(?:py|sh))\b", text))
    listed = {f"scripts/{path.name}" for path in (ROOT / "scripts").iterdir()
              if re.search(rf"\b{re.escape(path.name)}\b", text)}
    return sorted(name for name in run | listed if (ROOT / name).is_file())


def test_the_readme_names_the_scripts() -> None:
    named = scripts_named_in_the_readme()
    assert {"train.py", "predict.py", "scripts/evaluate.py", "scripts/benchmark_loader.py",
            "scripts/gpu_check.sh"} <= set(named), named


@pytest.mark.parametrize("script", scripts_named_in_the_readme())
def test_script_answers_help(script: str) -> None:
    runner = ["bash"] if script.endswith(".sh") else [sys.executable]
    result = subprocess.run([*runner, script, "--help"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage" in result.stdout.lower(), result.stdout[:500]


def test_loader_benchmark_measures_both_loaders(synthetic_root: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    benchmark_loader = load_script("benchmark_loader")
    assert benchmark_loader.main(["--data", str(synthetic_root), "--img-size", "32",
                                  "--workers", "0", "--batch-size", "8", "--seconds", "0.2",
                                  "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = re.findall(r"^\| (original files|preparation cache) \| .* \| ([\d.]+) \|$", out,
                      re.MULTILINE)
    assert [name for name, _ in rows] == ["original files", "preparation cache"], out
    assert all(float(rate) > 0 for _, rate in rows) and "speed-up of the cache" in out
