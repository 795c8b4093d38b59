"""benchmarks/gpu_check.py, the prepared device check, at toy sizes on the CPU (``--smoke``)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_peak_bandwidth_comes_from_the_table_or_the_override():
    check = _module()
    assert check.peak_gbps("NVIDIA H100 PCIe", None) == 2000.0
    assert check.peak_gbps("NVIDIA H100 80GB HBM3", None) == 3350.0
    assert check.peak_gbps("NVIDIA H200", None) == 4800.0
    assert check.peak_gbps("Some Future Accelerator", None) is None
    assert check.peak_gbps("NVIDIA H200", 1234.0) == 1234.0


def test_every_device_in_the_peak_table_resolves_to_its_own_row():
    """The first match wins, so a name that contains an earlier key (GH200 contains H200) must
    come before it."""
    check = _module()
    for key, peak in check.PEAK_GBPS:
        assert check.peak_gbps(f"NVIDIA {key}", None) == peak, key


@pytest.mark.slow
def test_smoke_run_writes_its_json_and_table(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--out-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_check_smoke.json").read_text())
    assert report["smoke"] and report["device"] == "CPU"
    assert report["cuda_tests"]["passed"]
    assert [row["n"] for row in report["bandwidth"]] == [2_000, 8_000]
    assert all(row["seconds_per_pick"] > 0 and row["gbps_pass"] > 0 for row in report["bandwidth"])
    assert report["lazy"]["same_picks"] and report["reference"]["equal"]
    assert report["spag"]["projections"] > 0  # tau = 0: every SPAG step projected
    table = (tmp_path / "gpu_check_smoke.md").read_text()
    assert "| 8,000 | 64 |" in table and "equal to the CPU float64 greedy: True" in table
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "gpu_check_smoke.json",
        "gpu_check_smoke.md",
    ]
