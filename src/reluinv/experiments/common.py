"""What every figure experiment shares: the run configuration, data, trained models, stores.

Data flows one way (DESIGN.md): cli -> experiments -> (zoo, train, data) -> maths -> report.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data import Dataset, load_circles, load_dataset, load_embedded_digits
from ..parallel import Executor, run_samples
from ..train import paper_recipe, quick_recipe, train


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
        device: where the per-sample spectra run (``"cpu"`` or ``"cuda"``); training, preimages
            and invariance searches stay on the CPU.
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
        return run_samples(fn, items, shared=shared, backend=self.executor.backend,
                           workers=self.executor.workers, scheduler=self.executor.scheduler,
                           store=self.store(name), progress=self.progress, desc=desc or name)


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


def trained(architecture: str, train_set: Dataset, test_set: Dataset, config: RunConfig,
            *, recipe=None) -> tuple[torch.nn.Sequential, dict[str, Any]]:
    """The architecture trained by the paper's recipe (``--full``) or its quick variant."""
    if recipe is None:
        recipe = quick_recipe(architecture) if config.quick else paper_recipe(architecture)
    if config.epochs is not None and recipe.epochs > config.epochs:
        recipe = recipe.replace(epochs=config.epochs)
    model, info = train(recipe, train_set, test_set=test_set, cache_dir=config.cache_dir,
                        progress=config.progress)
    return model, {"architecture": architecture, "epochs": recipe.epochs,
                   "test_accuracy": info.test_accuracy, "from_cache": info.from_cache,
                   "recipe": recipe.as_dict()}


def save_results(path: Path, results: dict[str, Any]) -> None:
    """Write results.json atomically (write, then rename), so an interruption leaves the old one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1, sort_keys=True))
    os.replace(tmp, path)


def load_results(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}
