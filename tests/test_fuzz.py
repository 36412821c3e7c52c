"""Differential fuzz: random argument forms and settings against torch's own behaviour.

Each case (tests/fuzz_cases.py) runs in a child process, so that a crash (a signal, an
abort) is caught and counted as a failure of that case rather than ending the test run.
The default run takes about half a minute; ``pytest -m slow`` runs ten times more cases.
"""

import collections
import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def run_cases(seed: int, count: int, timeout: float = 600) -> dict[int, str]:
    """Outcome of every case 0..count-1; a child that dies mid-case is restarted after it."""
    outcomes: dict[int, str] = {}
    first = 0
    while first < count:
        proc = subprocess.run(
            [sys.executable, os.path.join(HERE, "fuzz_cases.py"), str(seed), str(first), str(count - first)],
            capture_output=True, text=True, cwd=HERE, timeout=timeout,
        )
        for line in proc.stdout.splitlines():
            record = json.loads(line)
            outcomes[record["index"]] = record["outcome"]
        done = max([i for i in outcomes if i >= first], default=first - 1)
        if proc.returncode != 0:  # the case after the last reported one ended the process
            outcomes[done + 1] = f"crash: exit status {proc.returncode}: {proc.stderr[-300:]}"
            done += 1
        first = done + 1
    return outcomes


def check(outcomes: dict[int, str]) -> collections.Counter:
    classes = collections.Counter(o.split(":")[0] for o in outcomes.values())
    bad = {i: o for i, o in outcomes.items() if o.startswith(("mismatch", "crash"))}
    assert not bad, f"{len(bad)} of {len(outcomes)} cases failed ({dict(classes)}); first: " + "; ".join(
        f"case {i}: {o}" for i, o in sorted(bad.items())[:5]
    )
    # The generator must reach every class, or the run proves less than it claims.
    assert classes["ok"] > 0.3 * len(outcomes) and classes["same-error"] > 0 and classes["rejected"] > 0
    return classes


def test_fuzz_against_torch():
    classes = check(run_cases(seed=2026, count=2000))
    print(dict(classes))


@pytest.mark.slow
def test_fuzz_against_torch_long():
    classes = check(run_cases(seed=7, count=4000, timeout=3600))
    print(dict(classes))
