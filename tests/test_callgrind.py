"""benchmarks/callgrind_steps.py: its parsing and arithmetic, and the child process it runs under
valgrind (run here without valgrind, which the suite does not need)."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import callgrind_steps  # noqa: E402


def test_parse_collected_reads_the_last_summary_and_refuses_others():
    text = ("==7== Callgrind, a call-graph generating cache profiler\n==7== Events    : Ir Dr ...\n"
            "==7== Collected : 10 20 30 40 50 60 70 80 90\n==7==\n==7== I   refs:      10\n")
    assert callgrind_steps.parse_collected(text) == dict(zip(callgrind_steps.EVENTS, range(10, 100, 10)))
    with pytest.raises(RuntimeError, match="no callgrind summary"):
        callgrind_steps.parse_collected("==7== I   refs: 10\n")
    with pytest.raises(RuntimeError, match="cache-sim"):  # without the cache simulation: one event
        callgrind_steps.parse_collected("==7== Collected : 12345\n")


def test_per_step_and_report():
    events = callgrind_steps.EVENTS
    counts = {0: dict.fromkeys(events, 1000), 4: {e: 1000 + 40 * (i + 1) for i, e in enumerate(events)}}
    step = callgrind_steps.per_step(counts, 4)
    assert step == {e: 10.0 * (i + 1) for i, e in enumerate(events)}
    converted = {e: v * 1.5 for e, v in step.items()}
    control = {e: v + 1 for e, v in step.items()}
    meta = dict(commit="abc", dirty=False, command="python x", date="2026-01-01", machine="m", torch="t",
                device="cpu: CPU", threads=1)
    text = callgrind_steps.report(meta, [dict(model="M", plain=step, converted=converted, control=control)], 4)
    assert "## M" in text and "| instructions | 10 | 15 | +5 | +50.0% | +1 |" in text
    assert "| L1 instruction misses | 40 | 60 | +20 | +50.0% | +1 |" in text


def test_child_runs_the_steps():
    """What runs under valgrind: the pair built as models.py builds it, the steps of one variant."""
    for variant in callgrind_steps.VARIANTS:
        proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "callgrind_steps.py"), "--child",
                               "DCGAN generator", variant, "1"], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
