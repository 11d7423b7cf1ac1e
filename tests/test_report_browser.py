"""index.html checked in a real browser: headless Chromium, driven through the DevTools protocol
over ``--remote-debugging-pipe`` (no Python dependency): every image loads (naturalWidth > 0),
the page logs no console error, and the claims table is there.

Skips, saying why, where Chromium is not installed (``.ci/run`` installs Debian's ``chromium``).
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from reluinv import report
from reluinv.experiments.claims import evaluate

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="needs headless Chromium (Debian package 'chromium'; .ci/run installs it with apt-get)",
)

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-pipe",
]

#: What the page reports about itself once loaded.
CHECKS = """JSON.stringify({
  images: Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth]),
  claimsTable: !!document.querySelector('table.claims'),
  claimRows: document.querySelectorAll('table.claims tr').length - 1,
  firstHeading: (document.querySelector('h2') || {}).textContent,
  sections: Array.from(document.querySelectorAll('section h2')).map(h => h.textContent)
})"""


class DevTools:
    """A headless Chromium and one page, spoken to through the DevTools protocol on a pipe
    (fd 3: commands in, fd 4: replies and events out, each message NUL-terminated JSON)."""

    def __init__(self, profile: Path, timeout: float = 60.0):
        cmd_read, self._cmd = os.pipe()
        self._out, out_write = os.pipe()

        def wire() -> None:
            os.dup2(cmd_read, 3)
            os.dup2(out_write, 4)

        self.proc = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            pass_fds=(3, 4),
            preexec_fn=wire,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(cmd_read)
        os.close(out_write)
        self.deadline = time.monotonic() + timeout
        self.events: list[dict] = []
        self._buffer = b""
        self._next_id = 0
        self.session = None
        page = next(t for t in self.call("Target.getTargets")["targetInfos"] if t["type"] == "page")
        attached = self.call("Target.attachToTarget", targetId=page["targetId"], flatten=True)
        self.session = attached["sessionId"]

    def _message(self) -> dict:
        while b"\0" not in self._buffer:
            left = self.deadline - time.monotonic()
            if left <= 0 or not select.select([self._out], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._out, 1 << 16)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, **params) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if self.session is not None:
            message["sessionId"] = self.session
        os.write(self._cmd, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._message()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, method: str) -> None:
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self._message())

    def close(self) -> None:
        try:
            self.session = None
            self.call("Browser.close")
        except (RuntimeError, TimeoutError, OSError):
            pass
        finally:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            os.close(self._cmd)
            os.close(self._out)


def open_in_chromium(page: Path, tmp: Path) -> tuple[dict, list[str]]:
    """Load ``page`` in headless Chromium; return what :data:`CHECKS` reports and every console
    error (console.error calls, uncaught exceptions, and browser log errors such as a failed
    image load)."""
    browser = DevTools(tmp / "profile")
    try:
        for domain in ("Page", "Runtime", "Log"):
            browser.call(f"{domain}.enable")
        browser.call("Page.navigate", url=page.resolve().as_uri())
        browser.wait_for("Page.loadEventFired")
        checks = json.loads(
            browser.call("Runtime.evaluate", expression=CHECKS, returnByValue=True)["result"]["value"]
        )
        errors = []
        for event in browser.events:
            params = event.get("params", {})
            if event.get("method") == "Runtime.consoleAPICalled" and params.get("type") == "error":
                errors.append(" ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
            elif event.get("method") == "Runtime.exceptionThrown":
                errors.append(params["exceptionDetails"].get("text", "exception"))
            elif event.get("method") == "Log.entryAdded" and params["entry"]["level"] == "error":
                errors.append(f"{params['entry'].get('text')} {params['entry'].get('url', '')}")
        return checks, errors
    finally:
        browser.close()


# --- a small report with real PNGs -------------------------------------------------------------


def _cnn_layers(ranks: list[int], n: int = 48) -> list[dict]:
    layers, previous = [], n
    for block, rank in enumerate(ranks, start=1):
        for kind, r in (("Conv2d", previous), ("ReLU", rank)):
            number = 2 * block - (kind == "Conv2d")
            values = list(np.geomspace(2.0 * block, 0.5 / block, r)) + [0.0] * (n - r)
            role = f"{'conv' if kind == 'Conv2d' else 'ReLU'} {block}"
            layers.append(
                {
                    "index": number - 1,
                    "name": f"{number - 1}:{kind}",
                    "paper_layer": number,
                    "block": block,
                    "role": role,
                    "out_dim": 4 * n // block,
                    "ranks": [r] * 3,
                    "rank": float(r),
                    "condition": 4.0 * block**2,
                    "singular_values": values,
                }
            )
        previous = rank
    return layers


def small_results() -> dict:
    """Results of Figures 5, 6, 8, 9, 10 as the experiments store them, made up but complete."""
    common = {
        "samples": 3,
        "input_dim": 48,
        "input_shape": "3x4x4",
        "data": "stand-in, 3x4x4",
        "note": "stand-in, 3x4x4",
        "training": {"epochs": 1, "test_accuracy": 0.5},
        "device": "cpu",
        "setting": {
            "paper": {"data": "CIFAR-10", "samples": "50"},
            "run": {"mode": "quick", "data": "stand-in", "samples": "3"},
        },
    }
    wide, thin = _cnn_layers([48, 48, 48, 48, 48, 40]), _cnn_layers([48, 48, 48, 48, 30, 20])

    def summary(layers, loss):
        return {**common, "layers": layers, "first_rank_loss": loss}

    def effect(layers):
        relus = [layer for layer in layers if layer["role"].startswith("ReLU")]
        return {
            **common,
            "effect": [{"before": layers[2], "after": layers[3]}, {"before": layers[8], "after": layers[9]}],
            "decay": relus,
        }

    cs = list(np.linspace(0, 10, 101))
    return {
        "meta": {"mode": "quick", "description": "a small report for the browser test"},
        "fig5": {
            "wide": summary(wide, wide[11]),
            "thin": summary(thin, thin[9]),
            "input_dim": 48,
            "paper_loss_layer": 5,
            "setting": common["setting"],
        },
        "fig6": {**effect(wide), "architecture": "wide_cifar"},
        "fig8": effect(wide),
        "fig9": {
            **common,
            "samples": 1,
            "layer": 7,
            "paper_layer": 8,
            "block": 4,
            "role": "ReLU 4",
            "units": 120,
            "cs": cs,
            "counts": [min(80, int(50 + 5 * c)) for c in cs],
            "remaining": 80,
            "removed": 40,
            "c_star": 6.0,
            "sigma_min_after": 0.1,
            "sigma_max_after": 2.0,
        },
        "fig10": {**effect(thin), "wide_effect": effect(wide)["effect"][:1], "wide_samples": 3},
    }


def write_small_report(out: Path) -> Path:
    results = small_results()
    for key in ("fig5", "fig6", "fig8", "fig9", "fig10"):
        report.write_figure(key, results[key], out)
    results["claims"] = evaluate(results)
    return report.write_index(results, out)


def test_report_loads_in_chromium_with_every_image_and_the_claims_table(tmp_path):
    index = write_small_report(tmp_path)
    checks, errors = open_in_chromium(index, tmp_path)
    assert errors == []
    assert len(checks["images"]) == 5
    for src, complete, width in checks["images"]:
        assert complete and width > 0, f"{src} did not load"
    assert checks["claimsTable"] and checks["claimRows"] >= 10
    assert checks["firstHeading"].startswith("Claims")
    assert checks["sections"][0].startswith("Figure 5 - rank and conditioning")


def test_the_browser_check_sees_a_broken_image(tmp_path):
    """The harness can fail: a missing PNG is a console error and an image of width 0."""
    index = write_small_report(tmp_path)
    (tmp_path / "fig6.png").unlink()  # after write_index saw it, so the page still points at it
    checks, errors = open_in_chromium(index, tmp_path)
    assert any("fig6.png" in e or "ERR_FILE_NOT_FOUND" in e for e in errors), errors
    assert any(src == "fig6.png" and width == 0 for src, _, width in checks["images"])
