"""Tests of reluinv.parallel: the three back ends agree, results survive interruptions and dead workers.

The sample functions live at module level because worker processes (local and Dask) import them
from this module by name.  Each takes ``shared``, a dict with the torch model and a scratch folder
where the functions leave evidence of what ran (call logs, markers for "die only once").
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from reluinv import parallel
from reluinv.parallel import (
    Executor,
    ResultStore,
    SampleResult,
    add_executor_options,
    run_samples,
)

UNLUCKY_SEED = 13
DIES_ONCE_SEED = 8
ALWAYS_DIES_SEED = 21
#: Non-monotone keys and seeds, so that "input order" cannot be confused with sorted order.
SEEDS = {"s5": 5, "s13": UNLUCKY_SEED, "s2": 2, "s8": 8, "s1": 1, "s21": 21, "s34": 34}


class SimulatedKill(BaseException):
    """Stands for the process being killed: not an ``Exception``, so it stops the run."""


# ----------------------------------------------------------------------------------------------
# sample functions (module level: worker processes import them)


def analyse(shared: dict, seed: int) -> dict:
    """A small deterministic analysis: spectrum of a seeded matrix and a forward pass of the model."""
    if seed == UNLUCKY_SEED:
        raise ValueError(f"seed {seed} is unlucky")
    rng = np.random.default_rng(seed)
    matrix = rng.standard_normal((7, 5))
    singular_values = np.linalg.svd(matrix, compute_uv=False)
    with torch.no_grad():
        logits = shared["model"](torch.as_tensor(matrix, dtype=torch.float64))
    return {
        "seed": seed,
        "singular_values": singular_values,  # an ndarray: converted by tolist()
        "condition": float(singular_values[0] / singular_values[-1]),
        "logits_sum": logits.sum(),  # a 0-d tensor: converted by tolist()
        "argmax": logits.argmax(dim=1),
    }


def _log_call(shared: dict, seed: int) -> int:
    """Append ``seed`` to the call log; return how many calls the log holds now."""
    log = Path(shared["scratch"]) / "calls.log"
    with open(log, "a") as handle:  # one small O_APPEND write: safe across processes
        handle.write(f"{seed}\n")
    return len(log.read_text().split())


def logged_analyse(shared: dict, seed: int) -> dict:
    calls = _log_call(shared, seed)
    if calls >= shared.get("kill_at_call", calls + 1):  # ">=": parallel calls may skip a count
        raise SimulatedKill(f"killed during call {calls}")
    return analyse(shared, seed)


def dies_once_then_analyses(shared: dict, seed: int) -> dict:
    """Kills its worker process the first time it sees DIES_ONCE_SEED (a marker file remembers)."""
    _log_call(shared, seed)
    marker = Path(shared["scratch"]) / f"died-{seed}"
    if seed == DIES_ONCE_SEED and not marker.exists():
        marker.touch()
        os._exit(1)
    if seed == ALWAYS_DIES_SEED and shared.get("poison"):
        os._exit(3)
    return analyse(shared, seed)


def fails_once_then_analyses(shared: dict, seed: int) -> dict:
    marker = Path(shared["scratch"]) / f"failed-{seed}"
    if seed == 2 and not marker.exists():
        marker.touch()
        raise RuntimeError("transient trouble")
    return analyse(shared, seed)


def report_threads(shared: dict, seed: int) -> dict:
    from threadpoolctl import threadpool_info

    return {"torch": torch.get_num_threads(), "blas": max(p["num_threads"] for p in threadpool_info())}


def returns_a_list(shared: dict, seed: int) -> list:
    return [seed]


# ----------------------------------------------------------------------------------------------
# fixtures and helpers


@pytest.fixture(scope="module")
def model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3)).double()


@pytest.fixture
def shared(model: nn.Sequential, tmp_path: Path) -> dict:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    return {"model": model, "scratch": str(scratch)}


@pytest.fixture(scope="module")
def dask_scheduler() -> str:
    """Address of a two-worker Dask cluster on 127.0.0.1, shared by the tests of this module."""
    import logging

    from distributed import LocalCluster

    cluster = LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        silence_logs=logging.ERROR,
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
    )
    yield cluster.scheduler_address
    cluster.close()


def calls(shared: dict) -> list[int]:
    log = Path(shared["scratch"]) / "calls.log"
    return [int(word) for word in log.read_text().split()] if log.exists() else []


def expected_results(shared: dict) -> list[SampleResult]:
    """What every back end must return for SEEDS: computed directly, without the executor."""
    expected = []
    for key, seed in SEEDS.items():
        try:
            result = json.loads(json.dumps(analyse(shared, seed), default=lambda v: v.tolist()))
            expected.append(SampleResult(key=key, status="ok", result=result))
        except ValueError as exc:
            expected.append(SampleResult(key=key, status="failed", error=f"ValueError: {exc}"))
    return expected


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


BACKENDS = [
    pytest.param({"backend": "serial"}, id="serial"),
    pytest.param({"backend": "local", "workers": 2}, id="local"),
    pytest.param({"backend": "dask"}, id="dask"),  # the scheduler comes from the fixture
]


def options_for(backend_options: dict, request: pytest.FixtureRequest) -> dict:
    if backend_options["backend"] == "dask":
        return {"backend": "dask", "scheduler": request.getfixturevalue("dask_scheduler")}
    return dict(backend_options)


# ----------------------------------------------------------------------------------------------
# the back ends agree


def test_backends_give_the_same_results_in_input_order(shared, dask_scheduler, tmp_path):
    expected = expected_results(shared)
    assert [r.status for r in expected].count("failed") == 1

    runs = {}
    for options in (
        {"backend": "serial"},
        {"backend": "local", "workers": 2},
        {"backend": "dask", "scheduler": dask_scheduler},
    ):
        store = tmp_path / f"{options['backend']}.jsonl"
        runs[options["backend"]] = run_samples(
            analyse, SEEDS, shared=shared, store=store, progress=False, **options
        )
        # The store holds one record per sample and reads back to the same results.
        assert len(store.read_text().splitlines()) == len(SEEDS)
        assert ResultStore(store).load() == {r.key: r for r in expected}

    for backend, results in runs.items():
        assert results == expected, backend
        assert [r.key for r in results] == list(SEEDS)
    failed = runs["dask"][1]
    assert failed.key == "s13" and not failed.ok and failed.result is None
    assert failed.error == "ValueError: seed 13 is unlucky"
    assert "analyse" in failed.traceback


def test_sequence_items_are_keyed_by_position_and_results_are_plain_json(shared):
    results = run_samples(analyse, [3, 1, 2], shared=shared, backend="serial", progress=False)
    assert [r.key for r in results] == [0, 1, 2]
    assert [r.result["seed"] for r in results] == [3, 1, 2]
    first = results[0].result
    assert isinstance(first["singular_values"], list) and isinstance(first["logits_sum"], float)
    assert isinstance(first["argmax"], list) and isinstance(first["argmax"][0], int)


def test_a_result_that_is_not_a_dict_fails_that_sample(shared):
    [result] = run_samples(returns_a_list, [1], shared=shared, backend="serial", progress=False)
    assert result.status == "failed"
    assert result.error.startswith("TypeError:") and "must return a dict" in result.error


def test_workers_limit_their_threads(shared, dask_scheduler):
    cores = len(os.sched_getaffinity(0))
    local = run_samples(report_threads, range(4), shared=shared, backend="local", workers=2, progress=False)
    assert all(r.result == {"torch": max(1, cores // 2), "blas": max(1, cores // 2)} for r in local)
    # Dask's nanny starts single-threaded workers with OMP/MKL/OPENBLAS_NUM_THREADS=1.
    dask = run_samples(
        report_threads, range(2), shared=shared, backend="dask", scheduler=dask_scheduler, progress=False
    )
    assert all(r.result == {"torch": 1, "blas": 1} for r in dask)


def test_the_progress_bar_counts_resumed_samples(shared, tmp_path, capsys):
    store = tmp_path / "store.jsonl"
    run_samples(analyse, {"a": 1}, shared=shared, backend="serial", store=store, progress=False)
    capsys.readouterr()
    run_samples(analyse, {"a": 1, "b": 2}, shared=shared, backend="serial", store=store, desc="spectra")
    bar = capsys.readouterr().err
    assert "spectra" in bar and "1/2" in bar and "2/2" in bar


# ----------------------------------------------------------------------------------------------
# resuming


@pytest.mark.parametrize("backend_options", [BACKENDS[0], BACKENDS[1]])
def test_a_killed_run_resumes_without_recomputing(backend_options, shared, tmp_path):
    uninterrupted = run_samples(analyse, SEEDS, shared=shared, backend="serial", progress=False)
    store = tmp_path / "store.jsonl"

    with pytest.raises(SimulatedKill, match=r"^killed during call \d+$"):
        run_samples(
            logged_analyse,
            SEEDS,
            shared={**shared, "kill_at_call": 4},
            store=store,
            progress=False,
            **backend_options,
        )
    stored = ResultStore(store).load()
    if backend_options["backend"] == "serial":
        assert list(stored) == ["s5", "s13", "s2"]  # calls 1 to 3 finished; call 4 was killed
    stored_ok = {SEEDS[key] for key, result in stored.items() if result.ok}
    with open(store, "a") as handle:  # the kill also tore a half-written record
        handle.write('{"key": "s8", "status": "o')

    Path(shared["scratch"], "calls.log").unlink()
    resumed = run_samples(
        logged_analyse, SEEDS, shared=shared, store=store, progress=False, **backend_options
    )
    assert resumed == uninterrupted
    # Run again: every sample not stored as ok (the failed s13 included), each exactly once.
    assert sorted(calls(shared)) == sorted(set(SEEDS.values()) - stored_ok)
    lines = store.read_text().splitlines()
    assert all(json.loads(line) for line in lines)  # the torn record is gone
    assert ResultStore(store).load() == {r.key: r for r in uninterrupted}


@pytest.mark.parametrize("backend_options", [BACKENDS[1], BACKENDS[2]])
def test_every_backend_skips_stored_samples(backend_options, shared, tmp_path, request):
    options = options_for(backend_options, request)
    store = tmp_path / "store.jsonl"
    first_part = dict(list(SEEDS.items())[:4])
    run_samples(logged_analyse, first_part, shared=shared, store=store, progress=False, **options)
    stored_ok = [SEEDS[key] for key in first_part if key != "s13"]
    assert sorted(calls(shared)) == sorted(first_part.values())

    Path(shared["scratch"], "calls.log").unlink()
    results = run_samples(logged_analyse, SEEDS, shared=shared, store=store, progress=False, **options)
    assert results == expected_results(shared)
    # Run again: the rest, and the failed sample s13 (failures are retried by a new run).
    assert sorted(calls(shared)) == sorted(set(SEEDS.values()) - set(stored_ok))


def test_a_failed_sample_is_retried_by_the_next_run(shared, tmp_path):
    store = tmp_path / "store.jsonl"
    first = run_samples(
        fails_once_then_analyses, [1, 2], shared=shared, backend="serial", store=store, progress=False
    )
    assert [r.status for r in first] == ["ok", "failed"]
    assert first[1].error == "RuntimeError: transient trouble"
    second = run_samples(
        fails_once_then_analyses, [1, 2], shared=shared, backend="serial", store=store, progress=False
    )
    assert [r.status for r in second] == ["ok", "ok"]
    assert len(store.read_text().splitlines()) == 3  # append-only: the failure stays on record
    assert ResultStore(store).load()[1] == second[1]


# ----------------------------------------------------------------------------------------------
# dead workers


def test_local_backend_survives_a_dying_worker_and_isolates_a_poisonous_sample(shared):
    results = run_samples(
        dies_once_then_analyses,
        SEEDS,
        shared={**shared, "poison": True},
        backend="local",
        workers=2,
        retries=1,
        progress=False,
    )
    by_key = {r.key: r for r in results}
    expected = {r.key: r for r in expected_results(shared)}
    assert Path(shared["scratch"], f"died-{DIES_ONCE_SEED}").exists()
    assert by_key["s8"] == expected["s8"]  # its worker died once; the rerun succeeded
    assert by_key["s21"].status == "failed" and by_key["s21"].error.startswith("WorkerDied:")
    assert all(by_key[k] == expected[k] for k in SEEDS if k != "s21")
    # The poisonous sample ran once among others, then alone 1 + retries times.
    assert calls(shared).count(ALWAYS_DIES_SEED) <= 3


def test_dask_local_cluster_retries_a_task_whose_worker_died(shared):
    results = run_samples(
        dies_once_then_analyses,
        SEEDS,
        shared=shared,
        backend="dask",
        scheduler="local-cluster",
        workers=2,
        retries=2,
        progress=False,
    )
    assert Path(shared["scratch"], f"died-{DIES_ONCE_SEED}").exists()
    assert calls(shared).count(DIES_ONCE_SEED) == 2
    assert results == expected_results(shared)


# ----------------------------------------------------------------------------------------------
# options and errors


def test_a_scheduler_where_nothing_listens_fails_fast_and_says_where(shared):
    address = f"tcp://127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(ConnectionError, match=f"no Dask scheduler at {re.escape(address)}") as error:
        run_samples(analyse, [1], shared=shared, backend="dask", scheduler=address, progress=False)
    assert time.monotonic() - start < 15
    assert "local-cluster" in str(error.value)


def test_a_listener_that_is_not_a_dask_scheduler_fails_fast(shared, monkeypatch):
    monkeypatch.setattr(parallel.dask_backend, "SCHEDULER_CONNECT_TIMEOUT_S", 1.0)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        address = f"tcp://127.0.0.1:{silent.getsockname()[1]}"
        start = time.monotonic()
        with pytest.raises(ConnectionError, match=f"something listens at {address} but did not answer"):
            run_samples(analyse, [1], shared=shared, backend="dask", scheduler=address, progress=False)
        assert time.monotonic() - start < 15


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"backend": "threads"}, "unknown backend 'threads'"),
        ({"backend": "local", "workers": 0}, "workers must be at least 1"),
        ({"backend": "local", "workers": 2.5}, "workers must be a positive integer"),
        ({"backend": "serial", "workers": 3}, "one sample at a time"),
        ({"backend": "local", "scheduler": "tcp://127.0.0.1:8786"}, "needs backend 'dask'"),
        ({"backend": "dask"}, "backend 'dask' needs a scheduler"),
        ({"backend": "dask", "scheduler": "127.0.0.1:8786"}, "tcp://HOST:PORT"),
        ({"backend": "dask", "scheduler": "tcp://127.0.0.1"}, "tcp://HOST:PORT"),
        ({"backend": "dask", "scheduler": "tcp://127.0.0.1:8786", "workers": 2}, "has the workers"),
    ],
)
def test_bad_options_are_rejected(options, message):
    with pytest.raises(ValueError, match=message):
        Executor(**options)


def test_bad_arguments_to_run_are_rejected(shared):
    with pytest.raises(ValueError, match="retries must be an integer >= 0"):
        run_samples(analyse, [1], backend="serial", retries=-1)
    with pytest.raises(ValueError, match="sample keys must be str or int"):
        run_samples(analyse, {(1, 2): 1}, backend="serial")
    with pytest.raises(ValueError, match="got a string"):
        run_samples(analyse, "123", backend="serial")
    with pytest.raises(ValueError, match="module-level function"):
        run_samples(lambda shared, x: {}, [1], backend="local", progress=False)


def test_command_line_options_pass_straight_through():
    parser = argparse.ArgumentParser()
    add_executor_options(parser)
    args = parser.parse_args(["--scheduler", "tcp://10.0.0.5:8786"])
    executor = Executor.from_options(backend=args.backend, scheduler=args.scheduler, workers=args.workers)
    assert executor == Executor(backend="dask", scheduler="tcp://10.0.0.5:8786")
    args = parser.parse_args(["--workers", "3"])
    assert Executor.from_options(
        backend=args.backend, scheduler=args.scheduler, workers=args.workers
    ) == Executor(backend="local", workers=3)
    assert Executor.from_options(backend="serial") == Executor(backend="serial")
    assert Executor.from_options(workers="2").workers == 2
    with pytest.raises(ValueError, match="needs backend 'dask'"):
        Executor.from_options(backend="local", scheduler="local-cluster")
    with pytest.raises(SystemExit, match="^2$"):  # argparse's exit status for a bad choice
        parser.parse_args(["--backend", "threads"])


# ----------------------------------------------------------------------------------------------
# the store


def test_the_store_ignores_a_torn_last_line_and_rejects_corruption(tmp_path):
    path = tmp_path / "store.jsonl"
    with ResultStore(path).open() as store:
        store.append(SampleResult(key="a", status="ok", result={"x": 1}), fn_name="m.f")
    with open(path, "a") as handle:
        handle.write('{"key": "b", "sta')
    assert ResultStore(path).load() == {"a": SampleResult(key="a", status="ok", result={"x": 1})}

    with ResultStore(path).open() as store:  # opening cuts the torn line off before appending
        store.append(SampleResult(key="b", status="failed", error="E: boom"), fn_name="m.f")
    assert [json.loads(line)["key"] for line in path.read_text().splitlines()] == ["a", "b"]

    with open(path, "a") as handle:
        handle.write("not json\n")
    with pytest.raises(ValueError, match="line 3"):
        ResultStore(path).load()


def test_the_store_belongs_to_one_function_and_one_run(shared, tmp_path):
    store = tmp_path / "store.jsonl"
    run_samples(analyse, [1], shared=shared, backend="serial", store=store, progress=False)
    with pytest.raises(ValueError, match="holds results of .*analyse"):
        run_samples(report_threads, [1], shared=shared, backend="serial", store=store, progress=False)
    with ResultStore(store).open():
        with pytest.raises(RuntimeError, match="in use by another reluinv run"):
            ResultStore(store).open()


# ----------------------------------------------------------------------------------------------
# a killed run leaves no process behind

SLEEPY_RUN = """
import os, sys, time
from pathlib import Path
from reluinv.parallel import run_samples

def sleepy(folder, seconds):
    Path(folder, f"started-{os.getpid()}").touch()
    time.sleep(seconds)
    return {"slept": seconds}

if __name__ == "__main__":
    run_samples(sleepy, [120] * 4, shared=sys.argv[1], backend="local", workers=2,
                store=Path(sys.argv[1], "store.jsonl"), progress=False)
"""


def _descendants(pid: int) -> list[int]:
    parent_of = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent_of[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            continue
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        children = [c for c, p in parent_of.items() if p == parent]
        found += children
        frontier += children
    return found


def _running(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX":
                alive.append(pid)
        except OSError:
            pass
    return alive


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process tree from /proc")
def test_the_workers_of_a_killed_run_exit_within_seconds(tmp_path):
    """SIGKILL of the main process: its workers, busy with 120-second samples, notice within
    seconds and exit; the fork server and the resource tracker follow."""
    import subprocess
    import sys

    import reluinv

    script = tmp_path / "sleepy_run.py"
    script.write_text(SLEEPY_RUN)
    src = str(Path(reluinv.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    run = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while len(list(tmp_path.glob("started-*"))) < 2:  # both workers are inside a sample
            assert run.poll() is None and time.monotonic() < deadline, "the run did not start"
            time.sleep(0.1)
        tree = _descendants(run.pid)
        assert len(tree) >= 3  # fork server, resource tracker, two workers
        run.kill()
        run.wait(timeout=30)
        deadline = time.monotonic() + 3 * parallel.local.PARENT_POLL_S + 5
        while _running(tree) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _running(tree) == []
    finally:
        if run.poll() is None:
            run.kill()
