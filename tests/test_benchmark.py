"""The main job, benchmarks/run.py, must not break silently."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_benchmark_quick_run(tmp_path):
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "run.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = (tmp_path / "report.md").read_text()
    assert "## Gradient variance" in report and "## Speed and memory" in report
    results = json.loads((tmp_path / "results.json").read_text())
    rows = {(r["setting"], r["stride"], r["variant"]): r for r in results["variance"]}
    # plain stride-4 patchify loses a factor k*k = 16 of Kaiming's variance; "position" restores it
    plain = rows[("1 layer, c=3, k=4, image 100", 4, "F.conv2d")]
    fixed = rows[("1 layer, c=3, k=4, image 100", 4, "position")]
    assert plain["var_dx"] / plain["kaiming"] < 0.1
    assert 0.8 < fixed["var_dx"] / fixed["kaiming"] < 1.2
    assert {r["variant"] for r in results["speed"]} >= {"F.conv2d", "hook", "none", "map", "kernel", "position"}
    assert "## Per-call overhead" in report
    overhead = {r["variant"]: r for r in results["overhead"]}
    assert set(overhead) == {"F.conv2d", "hook", "none", "map", "kernel", "position"}
    assert overhead["F.conv2d"]["train_extra_us"] == 0 and all(r["train_us"] > 0 for r in overhead.values())
    for name in ("variance_k3_s2.png", "variance_k4_s4.png"):
        assert (tmp_path / name).stat().st_size > 10_000
