"""scripts/gpu_check.sh, the one-command GPU measurement, runs end to end in its CPU smoke mode
(tiny sizes), so that its first run on a GPU works."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_check_runs_on_the_cpu_in_smoke_mode(tmp_path: Path) -> None:
    out = tmp_path / "check"
    result = subprocess.run(["bash", "scripts/gpu_check.sh", "--smoke", "--output", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env={"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin",
                                 "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
                                 "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-3000:]
    stdout = result.stdout
    for section in ("== machine", "== benchmark", "== training", "== prediction", "== done"):
        assert section in stdout, section
    assert "ONNX Runtime (CPUExecutionProvider)" in stdout
    assert "training images/s" in stdout and "ISIC 2018 ranking score" in stdout
    rows = json.loads((out / "benchmark.json").read_text())["rows"]
    assert len(rows) == 5 and all(row["inference_img_s"] > 0 for row in rows)
    assert (out / "train" / "best.pt").is_file()
    assert (out / "evaluation" / "summary.json").is_file()
    assert len(list((out / "masks").glob("*_segmentation.png"))) == 40
