"""The ``dask`` back end: a Dask distributed cluster, at an address or started for the run.

A scheduler lost in the middle of a run (killed, or its host gone) ends the run with
:class:`SchedulerLost`; the samples already stored are kept, and the same command resumes.
"""

from __future__ import annotations

import re
import socket
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

from .local import available_cores
from .sample import SampleFunction, evaluate, failure
from .store import SampleKey, SampleResult

#: The ``scheduler`` value that starts a Dask ``LocalCluster`` for the run.
LOCAL_CLUSTER = "local-cluster"

#: Seconds to wait for a TCP connection to a Dask scheduler before declaring that nothing listens.
SCHEDULER_PROBE_TIMEOUT_S = 3.0
#: Seconds to wait for the Dask handshake once the TCP port answers, and for the client to connect.
SCHEDULER_CONNECT_TIMEOUT_S = 10.0
#: Seconds to wait for a running scheduler to have at least one worker.
WORKER_WAIT_TIMEOUT_S = 30.0


class SchedulerLost(ConnectionError):
    """The connection to a running Dask scheduler broke during a run.

    Attributes:
        scheduler: the scheduler's address.
    """

    def __init__(self, message: str, scheduler: str) -> None:
        super().__init__(message)
        self.scheduler = scheduler

    @classmethod
    def from_cause(cls, scheduler: str, cause: BaseException) -> SchedulerLost:
        """The error for ``cause`` (its first line only: Dask's messages run long)."""
        text = str(cause).strip()
        # Dask prefixes the connection's repr ("in <TCP (closed) ...>: "); the reason is what follows.
        detail = re.sub(r"^in <[^>]*>: ", "", text.splitlines()[0]) if text else type(cause).__name__
        return cls(f"lost the Dask scheduler at {scheduler} ({detail})", scheduler)


def split_address(address: str) -> tuple[str, int]:
    """(host, port) of ``tcp://HOST:PORT``; ValueError for anything else."""
    parts = urlsplit(address)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "tcp" or not parts.hostname or port is None or parts.path:
        raise ValueError(f"scheduler must be tcp://HOST:PORT or {LOCAL_CLUSTER!r}, got {address!r}")
    return parts.hostname, port


def _connect_dask(scheduler: str, *, workers: int | None, retries: int) -> tuple[Any, Any]:
    """Return ``(client, cluster)``; ``cluster`` is None for a running scheduler."""
    import logging

    import dask
    from distributed import Client, LocalCluster

    if scheduler == LOCAL_CLUSTER:
        # Saturation 1.0: a worker holds only the task it runs, so when it dies only that task is
        # charged a failure (by default a queued bystander would be charged too).
        with dask.config.set({"distributed.scheduler.worker-saturation": 1.0}):
            cluster = LocalCluster(
                n_workers=workers or available_cores(),
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=None,  # no dashboard, hence no bokeh needed
                silence_logs=logging.ERROR,
                # The scheduler's small HTTP server (health, metrics) would try port 8787, which
                # another cluster may hold; any free loopback port will do.
                scheduler_kwargs={"allowed_failures": retries, "dashboard_address": "127.0.0.1:0"},
            )
        try:
            return Client(cluster, set_as_default=False), cluster
        except BaseException:
            cluster.close()
            raise

    probe_scheduler(scheduler)
    client = Client(scheduler, timeout=SCHEDULER_CONNECT_TIMEOUT_S, set_as_default=False)
    try:
        client.wait_for_workers(1, timeout=WORKER_WAIT_TIMEOUT_S)
    except (OSError, TimeoutError):
        client.close()
        raise RuntimeError(
            f"the Dask scheduler at {scheduler} has had no workers for {WORKER_WAIT_TIMEOUT_S:g} s; "
            f"start some with `dask worker {scheduler}`"
        ) from None
    return client, None


def probe_scheduler(scheduler: str) -> None:
    """Check that a Dask scheduler answers at ``scheduler`` (``tcp://HOST:PORT``), in seconds.

    Raises:
        ValueError: a malformed address.
        ConnectionError: nothing listens there, or what listens is not a Dask scheduler.
    """
    # Dask's own connect retries for 30 s or more, and then waits for the scheduler's handshake
    # without any time limit.  A plain TCP probe tells in milliseconds (refused) or a few seconds
    # (unreachable host) that nothing listens; a handshake with a deadline, that what listens is
    # not a Dask scheduler.
    host, port = split_address(scheduler)
    hint = f"start one with `dask scheduler` or use --scheduler {LOCAL_CLUSTER}"
    try:
        with socket.create_connection((host, port), timeout=SCHEDULER_PROBE_TIMEOUT_S):
            pass
    except OSError as exc:
        raise ConnectionError(f"no Dask scheduler at {scheduler} ({exc}); {hint}") from None
    try:
        _dask_handshake(scheduler, timeout=SCHEDULER_CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError) as exc:
        raise ConnectionError(
            f"something listens at {scheduler} but did not answer as a Dask scheduler within "
            f"{SCHEDULER_CONNECT_TIMEOUT_S:g} s ({exc or type(exc).__name__}); {hint}"
        ) from None


def _dask_handshake(address: str, *, timeout: float) -> None:
    """Connect to ``address`` and exchange Dask's handshake, within ``timeout`` seconds."""
    import asyncio

    from distributed.comm import connect

    async def handshake() -> None:
        comm = await asyncio.wait_for(connect(address, timeout=timeout), timeout)
        await comm.close()

    # In a thread of its own, because the caller may already be running an event loop (Jupyter).
    with ThreadPoolExecutor(max_workers=1) as runner:
        runner.submit(asyncio.run, handshake()).result()


def _run_dask_sample(key: SampleKey, payload: Any, *, fn: SampleFunction, shared: Any) -> SampleResult:
    return evaluate(fn, shared, key, payload)


def _run_round(
    client: Any,
    fn: SampleFunction,
    remaining: list[tuple[SampleKey, Any]],
    shared: Any,
    record: Callable[[SampleResult], None],
    *,
    prefix: str,
    retries: int,
) -> list[tuple[SampleKey, Any]]:
    """Scatter ``shared``, run ``remaining``, record what finished; return the samples lost."""
    from concurrent.futures import CancelledError

    from distributed import as_completed as dask_as_completed

    # A one-element list, so that a list or dict `shared` is scattered as one object.
    [shared_future] = client.scatter([shared], broadcast=True, hash=False)
    futures = client.map(
        _run_dask_sample,
        [key for key, _ in remaining],
        [payload for _, payload in remaining],
        fn=fn,
        shared=shared_future,
        key=[f"{prefix}-{i}" for i in range(len(remaining))],
        retries=retries,  # for errors raised outside fn, e.g. while unpickling a payload
        pure=False,
    )
    try:
        sample_of = {future.key: sample for future, sample in zip(futures, remaining, strict=True)}
        lost: list[tuple[SampleKey, Any]] = []
        for future in dask_as_completed(futures, loop=client.loop):
            sample = sample_of[future.key]
            try:
                if future.status == "error":  # outside fn: KilledWorker, unpicklable payload, ...
                    record(failure(sample[0], future.exception()))
                elif future.status == "finished":
                    record(future.result())
                else:  # cancelled: the scattered `shared` was lost with its workers
                    lost.append(sample)
            except CancelledError:  # finished, but the result was lost with its worker
                lost.append(sample)
        return lost
    finally:
        client.cancel([*futures, shared_future])


def run_dask(
    fn: SampleFunction,
    pending: list[tuple[SampleKey, Any]],
    shared: Any,
    record: Callable[[SampleResult], None],
    *,
    scheduler: str,
    workers: int | None,
    retries: int,
) -> None:
    """Run ``pending`` on a Dask cluster.

    A worker that dies while running a task is handled by the scheduler, which runs the task
    elsewhere (``allowed_failures``; then the task errs with ``KilledWorker``).  Scattered data,
    however, cannot be recomputed: once every worker that held ``shared`` has died, the tasks that
    need it are cancelled.  Those samples are collected and submitted again with a fresh scatter,
    at most ``retries`` times.

    Raises:
        SchedulerLost: the scheduler at ``scheduler`` stopped answering during the run.
    """
    client, cluster = _connect_dask(scheduler, workers=workers, retries=retries)
    prefix = f"reluinv-{getattr(fn, '__name__', 'sample')}-{uuid.uuid4().hex[:8]}"
    remaining = pending
    try:
        for round_number in range(retries + 1):
            lost = _run_round(
                client, fn, remaining, shared, record, prefix=f"{prefix}-{round_number}", retries=retries
            )
            remaining = [sample for sample in pending if sample in lost]  # input order
            if not remaining:
                return
        for key, _ in remaining:
            record(
                SampleResult(
                    key=key,
                    status="failed",
                    error=f"WorkerDied: the workers holding this sample's data died {retries + 1} times",
                )
            )
    except (OSError, TimeoutError) as exc:
        if cluster is not None or isinstance(exc, SchedulerLost):
            raise
        raise SchedulerLost.from_cause(scheduler, exc) from exc
    finally:
        _close(client, cluster)


def _close(client: Any, cluster: Any) -> None:
    try:
        client.close(timeout=SCHEDULER_PROBE_TIMEOUT_S)
    except (OSError, TimeoutError):  # the scheduler is gone; nothing left to close there
        pass
    if cluster is not None:
        cluster.close()
