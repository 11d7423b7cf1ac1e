"""benchmarks/compare_versions.py: the tool that checks a change against the code before it."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def compare(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "compare_versions.py", *args],
        cwd=ROOT / "benchmarks",
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_a_checkout_compared_with_itself_decides_alike():
    run = compare(str(ROOT), "--sets", "gauss", "--repeats", "1")
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.splitlines()
    cases = [line for line in lines if line.startswith("  gauss ")]
    assert len(cases) == 8
    assert {line.split()[3] for line in cases} == {"compact", "singleton"}
    assert "VERDICTS DIFFER" not in run.stdout
    assert lines[-1] == "verdicts: all the same"


def test_an_unknown_revision_or_set_is_one_clear_line():
    run = compare("no-such-revision-xyz", "--sets", "gauss")
    assert run.returncode != 0
    assert "neither a checkout nor a revision" in run.stderr
    run = compare(str(ROOT), "--sets", "gauss,nope")
    assert run.returncode != 0
    assert "unknown set(s) nope" in run.stderr
