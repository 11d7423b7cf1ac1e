"""The :class:`Executor`: options checked once, the store read and written, a back end chosen."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .dask_backend import LOCAL_CLUSTER, SchedulerLost, probe_scheduler, run_dask, split_address
from .local import run_local
from .sample import SampleFunction, qualified_name
from .serial import run_serial
from .store import ResultStore, SampleKey, SampleResult, check_key

#: The back ends :class:`Executor` accepts.
BACKENDS = ("serial", "local", "dask")


@dataclass(frozen=True)
class Executor:
    """Where and how :meth:`run` executes per-sample work.  Options are checked on construction.

    Args:
        backend: ``"serial"``, ``"local"`` or ``"dask"``.
        workers: number of worker processes (``local``, or ``dask`` with ``"local-cluster"``);
            ``None`` means one per available core.  ``serial`` accepts only ``None`` or 1.
        scheduler: ``dask`` only, and required there: ``"tcp://HOST:PORT"`` of a running Dask
            scheduler, or ``"local-cluster"``.

    Example::

        executor = Executor(backend="dask", scheduler="local-cluster", workers=2)
        results = executor.run(fn, payloads, shared=model, store="out/run.jsonl")
    """

    backend: str = "local"
    workers: int | None = None
    scheduler: str | None = None

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; choose one of {', '.join(BACKENDS)}")
        if self.workers is not None:
            if isinstance(self.workers, bool) or not isinstance(self.workers, int):
                raise ValueError(f"workers must be a positive integer or None, got {self.workers!r}")
            if self.workers < 1:
                raise ValueError(f"workers must be at least 1, got {self.workers}")
        if self.backend != "dask":
            if self.scheduler is not None:
                raise ValueError(
                    f"scheduler={self.scheduler!r} needs backend 'dask' (backend is {self.backend!r})"
                )
            if self.backend == "serial" and self.workers not in (None, 1):
                raise ValueError(f"backend 'serial' runs one sample at a time; got workers={self.workers}")
            return
        if self.scheduler is None:
            raise ValueError(
                f"backend 'dask' needs a scheduler: an address tcp://HOST:PORT or {LOCAL_CLUSTER!r}"
            )
        if self.scheduler != LOCAL_CLUSTER:
            split_address(self.scheduler)  # raises ValueError when malformed
            if self.workers is not None:
                raise ValueError(
                    "workers applies to the local back end and to scheduler 'local-cluster'; "
                    f"the cluster at {self.scheduler} has the workers it was started with"
                )

    @classmethod
    def from_options(
        cls,
        *,
        backend: str | None = None,
        scheduler: str | None = None,
        workers: int | str | None = None,
    ) -> Executor:
        """Build an executor from command-line style options.

        ``backend=None`` means ``"dask"`` when a scheduler is given and ``"local"`` otherwise;
        ``workers`` may be a decimal string.  See :func:`add_executor_options`.

        Example::

            Executor.from_options(scheduler="tcp://10.0.0.5:8786")   # backend "dask"
            Executor.from_options(backend="local", workers="4")
        """
        if isinstance(workers, str):
            try:
                workers = int(workers)
            except ValueError:
                raise ValueError(f"workers must be a positive integer, got {workers!r}") from None
        if scheduler is not None and not scheduler.strip():
            scheduler = None
        if backend is None:
            backend = "dask" if scheduler is not None else "local"
        return cls(backend=backend, workers=workers, scheduler=scheduler)

    def check_reachable(self) -> None:
        """Raise ConnectionError now, before any work, when the Dask scheduler does not answer."""
        if self.backend == "dask" and self.scheduler not in (None, LOCAL_CLUSTER):
            probe_scheduler(self.scheduler)

    def run(
        self,
        fn: SampleFunction,
        items: Mapping[SampleKey, Any] | Iterable[Any],
        *,
        shared: Any = None,
        store: ResultStore | str | os.PathLike[str] | None = None,
        progress: bool = True,
        desc: str | None = None,
        retries: int = 2,
    ) -> list[SampleResult]:
        """Apply ``fn(shared, payload)`` to every sample; see :func:`run_samples`."""
        if not callable(fn):
            raise ValueError(f"fn must be callable, got {type(fn).__name__}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be an integer >= 0, got {retries!r}")
        samples = _as_samples(items)
        fn_name = qualified_name(fn)
        if store is not None and not isinstance(store, ResultStore):
            store = ResultStore(store)

        # Lock the store before reading it, so that a concurrent run cannot append in between.
        owned = store if store is not None and not store.is_open else None  # opened (and closed) here
        if owned is not None:
            owned.open()
        try:
            finished: dict[SampleKey, SampleResult] = {}
            if store is not None:
                stored = store.load(fn_name=fn_name)
                finished = {key: stored[key] for key, _ in samples if key in stored and stored[key].ok}
            pending = [(key, payload) for key, payload in samples if key not in finished]
            bar = _progress_bar(
                total=len(samples),
                initial=len(finished),
                enabled=progress,
                desc=desc or str(getattr(fn, "__name__", "samples")),
            )
        except BaseException:
            if owned is not None:
                owned.close()
            raise
        failures = 0

        def record(sample: SampleResult) -> None:
            nonlocal failures
            if store is not None:
                store.append(sample, fn_name=fn_name)
            finished[sample.key] = sample
            if not sample.ok:
                failures += 1
                bar.set_postfix(failed=failures, refresh=False)
            bar.update(1)

        try:
            if pending:
                self._dispatch(fn, pending, shared, record, retries)
        except KeyboardInterrupt:
            raise RunInterrupted(_kept(samples, finished, store)) from None
        except SchedulerLost as exc:
            raise SchedulerLost(f"{exc}; {_kept(samples, finished, store)}", exc.scheduler) from exc
        finally:
            bar.close()
            if owned is not None:
                owned.close()
        return [finished[key] for key, _ in samples]

    def _dispatch(
        self,
        fn: SampleFunction,
        pending: list[tuple[SampleKey, Any]],
        shared: Any,
        record: Callable[[SampleResult], None],
        retries: int,
    ) -> None:
        if self.backend == "serial":
            run_serial(fn, pending, shared, record)
        elif self.backend == "local":
            run_local(fn, pending, shared, record, workers=self.workers, retries=retries)
        else:
            run_dask(
                fn,
                pending,
                shared,
                record,
                scheduler=self.scheduler or LOCAL_CLUSTER,
                workers=self.workers,
                retries=retries,
            )


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C (or SIGTERM, which the ``reluinv`` command turns into Ctrl-C).

    Its message says how many samples the store keeps; rerunning resumes from there.
    """


def _kept(
    samples: list[tuple[SampleKey, Any]],
    finished: Mapping[SampleKey, SampleResult],
    store: ResultStore | None,
) -> str:
    """How many samples a stopped run leaves done; read from the store when there is one (an
    interruption may land between storing a result and counting it)."""
    keys = {key for key, _ in samples}
    if store is None:
        done = sum(1 for sample in finished.values() if sample.ok)
        return f"{done} of {len(keys)} samples had finished; nothing was stored"
    done = sum(1 for key, sample in store.load().items() if sample.ok and key in keys)
    return f"{done} of {len(keys)} samples are kept in {store.path}; run the same command again to resume"


def run_samples(
    fn: SampleFunction,
    items: Mapping[SampleKey, Any] | Iterable[Any],
    *,
    shared: Any = None,
    backend: str = "local",
    workers: int | None = None,
    scheduler: str | None = None,
    store: ResultStore | str | os.PathLike[str] | None = None,
    progress: bool = True,
    desc: str | None = None,
    retries: int = 2,
) -> list[SampleResult]:
    """Apply ``fn(shared, payload)`` to every sample and return the results in input order.

    Args:
        fn: a module-level function (worker processes import it by name) returning a
            JSON-serialisable dict.  ``numpy``/``torch`` values are converted with ``tolist()``.
        items: a mapping ``{key: payload}`` (keys are ``str`` or ``int``, order is input order) or
            an iterable of payloads, whose keys are then their positions 0, 1, 2, ...
        shared: data every sample needs (model, layer matrices); sent to each worker once.
        backend, workers, scheduler: see :class:`Executor`.
        store: a :class:`ResultStore` or a path.  Results are appended as they arrive; samples
            already stored as ``"ok"`` are not run again, samples stored as ``"failed"`` are.
            ``None``: keep nothing on disk.
        progress: show a tqdm progress bar on stderr.
        desc: label of the progress bar (default: the function's name).
        retries: how often a sample is run again after a worker process died while running it
            (an exception in ``fn`` is not retried within the run).  ``local``: deaths of a worker
            that ran only this sample count (samples in flight when a worker dies are rerun one
            at a time to find the culprit).  ``dask``: with ``"local-cluster"`` this is the
            scheduler's ``allowed_failures``; a running scheduler keeps its own setting (Dask's
            default is 3).  Also, for ``dask``, how often samples are resubmitted after every
            worker holding the scattered ``shared`` died, and Dask's ``retries=`` for errors
            raised outside ``fn`` (e.g. unpickling a payload on a worker).

    Returns:
        One :class:`SampleResult` per sample, in input order.

    Raises:
        ValueError: bad options, keys or items; ``fn``/``shared`` not picklable (``local``).
        ConnectionError: no Dask scheduler answers at ``scheduler``.
        RuntimeError: the store is in use by another run; worker processes keep dying before
            running any sample.

    Example::

        >>> from reluinv.parallel import run_samples
        >>> def scaled(factor, x):
        ...     return {"value": factor * x}
        >>> [r.result["value"] for r in run_samples(scaled, [1, 2, 3], shared=10,
        ...                                         backend="serial", progress=False)]
        [10, 20, 30]
    """
    executor = Executor(backend=backend, workers=workers, scheduler=scheduler)
    return executor.run(fn, items, shared=shared, store=store, progress=progress, desc=desc, retries=retries)


def add_executor_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--backend``, ``--scheduler`` and ``--workers`` to a command-line parser.

    Pass the parsed values to :meth:`Executor.from_options`.

    Example::

        parser = argparse.ArgumentParser()
        add_executor_options(parser)
        args = parser.parse_args(["--scheduler", "local-cluster", "--workers", "2"])
        executor = Executor.from_options(backend=args.backend, scheduler=args.scheduler,
                                         workers=args.workers)
    """
    group = parser.add_argument_group("execution")
    group.add_argument(
        "--backend",
        choices=BACKENDS,
        default=None,
        help="where per-sample work runs (default: dask if --scheduler is given, else local)",
    )
    group.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDR",
        help=f"Dask scheduler tcp://HOST:PORT, or {LOCAL_CLUSTER} to start one here",
    )
    group.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="worker processes (local back end or local-cluster; default: one per core)",
    )


def _as_samples(items: Mapping[SampleKey, Any] | Iterable[Any]) -> list[tuple[SampleKey, Any]]:
    if isinstance(items, (str, bytes)):
        raise ValueError("items must be a mapping {key: payload} or an iterable of payloads, got a string")
    if isinstance(items, Mapping):
        return [(check_key(key), payload) for key, payload in items.items()]
    try:
        return list(enumerate(items))
    except TypeError:
        raise ValueError(
            f"items must be a mapping {{key: payload}} or an iterable of payloads, got {type(items).__name__}"
        ) from None


class _NoProgress:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(*, total: int, initial: int, enabled: bool, desc: str) -> Any:
    if not enabled:
        return _NoProgress()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="sample", dynamic_ncols=True)
