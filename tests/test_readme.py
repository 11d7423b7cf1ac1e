"""The README's Python examples run and print what the README says they print.

Each ```python block that the README follows with "prints" and an output block is run in a fresh
interpreter; its output is compared line by line with the README's.  Words and integers must match
exactly; decimals to 1 % (the last printed digit of a condition number may move with the BLAS),
and numbers the README prints below 1e-9 (rounding residues) only need to stay below 1e-9.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
_BLOCK = re.compile(r"```python\n(.*?)```\s*\n\s*prints[^\n]*\n\s*```\n(.*?)```", re.DOTALL)
_NUMBER = re.compile(r"([-+]?(?:\d+\.\d*|\.\d+|\d+)(?:e[-+]?\d+)?)")


def examples() -> list[tuple[str, str]]:
    return [(code, printed) for code, printed in _BLOCK.findall(README.read_text())]


def same_line(got: str, want: str) -> bool:
    got_parts, want_parts = _NUMBER.split(got.strip()), _NUMBER.split(want.strip())
    if len(got_parts) != len(want_parts):
        return False
    for i, (g, w) in enumerate(zip(got_parts, want_parts, strict=True)):
        if i % 2 == 0:  # text between numbers
            if " ".join(g.split()) != " ".join(w.split()):
                return False
        elif re.fullmatch(r"[-+]?\d+", w):
            if g != w:
                return False
        elif abs(float(w)) < 1e-9:
            if abs(float(g)) >= 1e-9:
                return False
        elif abs(float(g) - float(w)) > 1e-2 * abs(float(w)):
            return False
    return True


def test_the_readme_has_examples_with_their_output():
    assert len(examples()) >= 3


def test_number_comparison_is_strict_where_it_should_be():
    assert same_line("rank  313  condition      44.3", "rank  313  condition  44.31")
    assert not same_line("rank  314  condition      44.3", "rank  313  condition  44.3")
    assert not same_line("condition 45.3", "condition 44.3")
    assert same_line("changed by 2e-16", "changed by 6e-17")
    assert not same_line("changed by 2e-3", "changed by 6e-17")
    assert not same_line("compact", "unbounded")


@pytest.mark.parametrize("index", range(len(examples())))
def test_readme_example_prints_what_the_readme_says(index):
    code, printed = examples()[index]
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=README.parent
    )
    assert run.returncode == 0, run.stderr[-2000:]
    got = [line for line in run.stdout.splitlines() if line.strip()]
    want = [line for line in printed.splitlines() if line.strip()]
    assert len(got) == len(want), (got, want)
    for g, w in zip(got, want, strict=True):
        assert same_line(g, w), f"README example {index + 1} printed\n  {g}\ninstead of\n  {w}"
