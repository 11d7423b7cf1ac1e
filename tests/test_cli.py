"""The ``reluinv`` command as a hostile but fair user meets it.

One rule (README, ``reluinv.cli``): every failure the user can cause ends with exit status 2 and
exactly one line on stderr, ``reluinv: error: ...``, naming the file, option or sample at fault;
a traceback only with ``--debug``.  Ctrl-C and SIGTERM end a run with one line and status 130,
and leave no process of the run behind; so does SIGKILL (workers watch their parent).  Two runs
into one ``--out`` keep both results; a smoke result is never reused by a proper run.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import reluinv
from reluinv.cli import main

SRC = str(Path(reluinv.__file__).resolve().parents[1])
#: How long the processes of a killed run may take to disappear.
CLEANUP_S = 8.0
#: Interrupted and stopped runs need a run in progress: this many samples of NETS' "wide", so that
#: the run is still going when a test stops it even on a quiet machine (400 could all finish first).
LONG_RUN_SAMPLES = 4000

NETS = textwrap.dedent("""
    import torch
    from torch import nn

    def small():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 8), nn.ReLU())

    def wide():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(60, 120), nn.ReLU(), nn.Linear(120, 120), nn.ReLU())
""")


# ----------------------------------------------------------------------------------------------
# helpers


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str], str]:
    """(exit status, stderr lines, stdout) of ``reluinv ARGV`` run in this process."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own exit
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.err.splitlines(), captured.out


def assert_one_line_error(code: int, err: list[str], *named: str) -> None:
    assert code == 2, err
    assert len(err) == 1, err
    assert err[0].startswith("reluinv: error: "), err
    for text in named:
        assert text in err[0], (text, err[0])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def subprocess_env(*paths: Path, **extra: str) -> dict[str, str]:
    """This interpreter's reluinv (and ``paths``) importable in a child process."""
    python_path = os.pathsep.join([SRC, *map(str, paths), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": python_path, **extra}


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc: children of children, ...)."""
    parent_of: dict[int, int] = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent_of[int(stat.split("/")[2])] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, ppid in parent_of.items() if ppid == parent]
        found += children
        frontier += children
    return found


def running(pids: list[int]) -> list[int]:
    """Those of ``pids`` still running (zombies count as gone)."""
    alive = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state not in ("Z", "X"):
            alive.append(pid)
    return alive


def wait_until_gone(pids: list[int], timeout: float = CLEANUP_S) -> list[int]:
    deadline = time.monotonic() + timeout
    while running(pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    return running(pids)


def stored_lines(out: Path) -> int:
    return sum(len(Path(f).read_text().splitlines()) for f in glob.glob(str(out / "work" / "*.jsonl")))


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Trained weights shared by the tests of this module (trainings capped at one epoch)."""
    return tmp_path_factory.mktemp("weights")


@pytest.fixture
def nets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder with ``cli_nets.py`` (model builders) and inputs, made the current folder."""
    (tmp_path / "cli_nets.py").write_text(NETS)
    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", rng.random((3, 6)))
    np.save(tmp_path / "wide.npy", rng.random((LONG_RUN_SAMPLES, 60)))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_long_analysis(nets: Path, out: Path, *options: str, **env: str) -> subprocess.Popen[str]:
    """``reluinv analyze`` of LONG_RUN_SAMPLES samples in a session of its own, once it has
    stored a few results (so that a run is truly in progress)."""
    command = [
        sys.executable,
        "-m",
        "reluinv.cli",
        "analyze",
        "cli_nets:wide",
        "--inputs",
        "wide.npy",
        "--out",
        str(out),
        "--no-progress",
        *options,
    ]
    process = subprocess.Popen(
        command,
        cwd=nets,
        env=subprocess_env(nets, **env),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        # A shell's background job inherits an ignored SIGINT (POSIX), and so would the run: give
        # it the default disposition, as in an interactive terminal, so that Ctrl-C is tested.
        preexec_fn=_default_sigint,
    )
    deadline = time.monotonic() + 120
    while stored_lines(out) < 3:
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the analysis did not get going: {process.communicate()}")
        time.sleep(0.1)
    return process


# ----------------------------------------------------------------------------------------------
# faults found before any work: options, files, folders


def _bad_idx_folder(folder: Path) -> Path:
    """IDX image files whose header sizes (2**22, 2**21, 2**21) overflow a 64-bit product."""
    folder.mkdir()
    header = (0x0803).to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in (2**22, 2**21, 2**21))
    labels = (0x0801).to_bytes(4, "big") + (2).to_bytes(4, "big") + bytes(2)
    for split in ("train", "t10k"):
        (folder / f"{split}-images-idx3-ubyte").write_bytes(header)
        (folder / f"{split}-labels-idx1-ubyte").write_bytes(labels)
    return folder


OPTION_FAULTS = [
    pytest.param(["reproduce", "--limit", "0"], ["--limit", "got 0"], id="limit-0"),
    pytest.param(["reproduce", "--limit", "-1"], ["--limit", "got -1"], id="limit-negative"),
    pytest.param(["reproduce", "--limit", "many"], ["--limit", "'many'"], id="limit-not-a-number"),
    pytest.param(["reproduce", "--epochs", "0"], ["--epochs"], id="epochs-0"),
    pytest.param(["reproduce", "--algorithm1-samples", "0"], ["--algorithm1-samples", "got 0"], id="alg1-0"),
    pytest.param(["reproduce", "fig99"], ["fig99"], id="unknown-figure"),
    pytest.param(["reproduce", "--backend", "threads"], ["--backend", "threads"], id="unknown-backend"),
    pytest.param(["reproduce", "--workers", "0"], ["workers"], id="workers-0"),
    pytest.param(["reproduce", "--scheduler", "127.0.0.1:8786"], ["tcp://HOST:PORT"], id="bad-address"),
    pytest.param(["reproduce", "--backend", "serial", "--workers", "3"], ["serial"], id="serial-workers"),
    pytest.param(["reproduce", "--quick", "--full"], ["--full"], id="quick-and-full"),
    pytest.param(["demo", "--samples", "0"], ["--samples"], id="demo-samples-0"),
    pytest.param(["frobnicate"], ["frobnicate"], id="unknown-command"),
    pytest.param([], ["command"], id="no-command"),
    pytest.param(["analyze", "cli_nets:small"], ["--inputs"], id="analyze-without-inputs"),
    pytest.param(
        ["analyze", "cli_nets:small", "--inputs", "x.npy", "--layers", "one"],
        ["one"],
        id="analyze-layers-not-integers",
    ),
]


@pytest.mark.parametrize(("argv", "named"), OPTION_FAULTS)
def test_option_faults_are_one_line_and_status_2(argv, named, nets, capsys):
    code, err, _ = run_main(
        [*argv, "--out", str(nets / "out")] if argv[:1] == ["reproduce"] else argv, capsys
    )
    assert_one_line_error(code, err, *named)


def test_out_on_a_file_or_below_a_file_is_refused_before_any_work(tmp_path, capsys):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    for out in (a_file, a_file / "below"):
        for argv in (
            ["reproduce", "fig1", "--limit", "2"],
            ["analyze", "cli_nets:small", "--inputs", "x.npy"],
        ):
            start = time.monotonic()
            code, err, _ = run_main([*argv, "--out", str(out), "--no-progress"], capsys)
            assert_one_line_error(code, err, "--out", str(out))
            assert time.monotonic() - start < 10  # nothing was trained or computed first
    assert a_file.read_text() == "not a folder"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into any folder, whatever its mode")
def test_out_in_an_unwritable_folder_is_refused_before_any_work(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        for out in (locked, locked / "new"):
            code, err, _ = run_main(["reproduce", "fig1", "--out", str(out)], capsys)
            assert_one_line_error(code, err, "--out", str(out))
    finally:
        locked.chmod(0o700)


def test_data_faults_name_the_file(nets, tmp_path, capsys):
    """Missing folders and files, unreadable data, a model that cannot be analysed."""
    bad_idx = _bad_idx_folder(tmp_path / "idx")
    np.save(nets / "objects.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    np.save(nets / "nan.npy", np.full((2, 6), np.nan))
    np.save(nets / "wrong-shape.npy", np.zeros((2, 5)))
    training = torch.jit.script(nn.Sequential(nn.Linear(6, 6), nn.Dropout(0.5), nn.ReLU()).train())
    torch.jit.save(training, str(nets / "training.pt"))
    analyze = ["analyze", "--no-progress", "--backend", "serial", "--out", str(nets / "a")]
    faults = [
        (["reproduce", "fig4", "--data-dir", str(tmp_path / "missing")], ["--data-dir", "missing"]),
        (
            [
                "reproduce",
                "fig4",
                "--limit",
                "2",
                "--backend",
                "serial",
                "--no-progress",
                "--data-dir",
                str(bad_idx),
            ],
            ["images-idx3-ubyte"],
        ),
        ([*analyze, "missing.pt", "--inputs", "x.npy"], ["missing.pt"]),
        ([*analyze, "cli_nets:absent", "--inputs", "x.npy"], ["absent"]),
        ([*analyze, "no_such_module:small", "--inputs", "x.npy"], ["no_such_module"]),
        ([*analyze, "cli_nets:small", "--inputs", "missing.npy"], ["missing.npy"]),
        ([*analyze, "cli_nets:small", "--inputs", "objects.npy"], ["objects.npy"]),
        ([*analyze, "cli_nets:small", "--inputs", "nan.npy"], ["NaN"]),
        ([*analyze, "cli_nets:small", "--inputs", "wrong-shape.npy"], ["shape"]),
        ([*analyze, "cli_nets:small", "--inputs", "x.npy", "--layers", "0"], ["0"]),
        ([*analyze, "cli_nets:small", "--inputs", "x.npy", "--weights", "missing-w.pt"], ["missing-w.pt"]),
        ([*analyze, "training.pt", "--inputs", "x.npy"], ["training.pt", "training mode"]),
    ]
    failed = []
    for argv, named in faults:
        code, err, _ = run_main(argv, capsys)
        try:
            assert_one_line_error(code, err, *named)
        except AssertionError as exc:
            failed.append(f"{' '.join(argv)}: {exc}")
    assert not failed, "\n".join(failed)


def test_a_scheduler_where_nothing_listens_is_found_before_any_work(nets, capsys):
    address = f"tcp://127.0.0.1:{free_port()}"
    for argv in (
        ["reproduce", "fig4", "--out", str(nets / "r")],
        ["analyze", "cli_nets:small", "--inputs", "x.npy", "--out", str(nets / "a")],
    ):
        start = time.monotonic()
        code, err, _ = run_main([*argv, "--scheduler", address, "--no-progress"], capsys)
        assert_one_line_error(code, err, address)
        assert time.monotonic() - start < 15


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_without_a_gpu_is_one_line(nets, capsys):
    code, err, _ = run_main(["reproduce", "fig5", "--device", "cuda", "--out", str(nets / "o")], capsys)
    assert_one_line_error(code, err, "CUDA")


def test_debug_shows_the_traceback(nets, capsys):
    with pytest.raises(ValueError, match="unknown figure 'fig99'"):
        main(["--debug", "reproduce", "fig99", "--out", str(nets / "o")])
    with pytest.raises(ValueError, match="unknown figure 'fig99'"):
        main(["reproduce", "fig99", "--out", str(nets / "o"), "--debug"])


# ----------------------------------------------------------------------------------------------
# the output folder: concurrent runs, corrupt files, smoke results


def _reproduce(out: Path, *figures: str, limit: int = 3) -> list[str]:
    return [
        "reproduce",
        *figures,
        "--out",
        str(out),
        "--limit",
        str(limit),
        "--epochs",
        "1",
        "--backend",
        "serial",
        "--no-progress",
    ]


MERGE_RACE = """
import sys
from pathlib import Path
from reluinv.experiments.common import (Setting, merged_results, results_lock, save_figure,
                                        save_results)

out, key = Path(sys.argv[1]), sys.argv[2]
setting = Setting(mode="quick", limit=None, data_dir=None)
for round in range(40):
    save_figure(out, key, setting, {"round": round})
    with results_lock(out):
        save_results(out / "results.json", merged_results(out, setting))
"""


def test_runs_sharing_an_out_merge_their_figures_under_a_lock(tmp_path):
    """Two processes store a figure each and rewrite results.json 40 times, at the same time:
    the last results.json holds both figures, each at its last round."""
    out = tmp_path / "shared"
    (out / "results").mkdir(parents=True)
    script = tmp_path / "race.py"
    script.write_text(MERGE_RACE)
    runs = [
        subprocess.Popen(
            [sys.executable, str(script), str(out), key],
            env=subprocess_env(),
            stderr=subprocess.PIPE,
            text=True,
        )
        for key in ("fig1", "fig4")
    ]
    for run in runs:
        assert run.wait(timeout=120) == 0, run.stderr.read()
    results = json.loads((out / "results.json").read_text())
    assert results["fig1"]["round"] == 39 and results["fig4"]["round"] == 39


@pytest.mark.slow
def test_two_runs_into_one_out_keep_both_results(cache, tmp_path):
    out = tmp_path / "shared-out"
    env = subprocess_env(RELUINV_CACHE=str(cache))
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "reluinv.cli", *_reproduce(out, figure)],
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for figure in ("fig1", "fig4")
    ]
    for run in runs:
        stdout, stderr = run.communicate(timeout=600)
        assert run.returncode == 0, stderr
    results = json.loads((out / "results.json").read_text())
    assert {"fig1", "fig4", "meta", "claims"} <= set(results)
    assert results["fig1"]["limit"] == 3 and results["fig4"]["limit"] == 3
    index = (out / "index.html").read_text()
    assert "id='fig1'" in index and "id='fig4'" in index


def test_a_smoke_result_is_recomputed_for_another_limit_and_kept_for_the_same(
    cache, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("RELUINV_CACHE", str(cache))
    out = tmp_path / "o"
    assert run_main(_reproduce(out, "fig1", limit=3), capsys)[0] == 0
    first = json.loads((out / "results" / "fig1.json").read_text())
    assert first["setting"]["limit"] == 3 and np.size(first["result"]["kind"]) == 9  # a 3 x 3 grid

    code, _, stdout = run_main(_reproduce(out, "fig1", limit=4), capsys)
    assert code == 0 and "--limit 3" in stdout and "recomputing" in stdout
    assert np.size(json.loads((out / "results.json").read_text())["fig1"]["kind"]) == 16

    code, _, stdout = run_main(_reproduce(out, "fig1", limit=4), capsys)
    assert code == 0 and "already in" in stdout


def test_corrupt_result_files_are_reported_kept_aside_and_rebuilt(cache, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RELUINV_CACHE", str(cache))
    out = tmp_path / "o"
    assert run_main(_reproduce(out, "fig1"), capsys)[0] == 0
    whole = (out / "results.json").read_text()
    (out / "results.json").write_text(whole[: len(whole) // 2])  # a truncated write
    stored = out / "results" / "fig1.json"
    stored.write_text(stored.read_text()[:40])

    code, err, stdout = run_main(_reproduce(out, "fig1"), capsys)
    assert code == 0
    warnings = [line for line in err if line.startswith("reluinv: warning:")]
    assert len(warnings) == 2 and any("results.json" in w for w in warnings)
    assert "fig1: computed" in stdout  # the corrupt figure file was not trusted
    assert len(glob.glob(str(out / "results.json.corrupt-*"))) == 1
    assert len(glob.glob(str(out / "results" / "fig1.json.corrupt-*"))) == 1
    assert "fig1" in json.loads((out / "results.json").read_text())


def test_a_stored_result_that_cannot_be_plotted_is_recomputed(cache, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RELUINV_CACHE", str(cache))
    out = tmp_path / "o"
    assert run_main(_reproduce(out, "fig1"), capsys)[0] == 0
    stored = out / "results" / "fig1.json"
    record = json.loads(stored.read_text())
    record["result"] = {"side": 0}  # what an old --limit 0 run left behind
    stored.write_text(json.dumps(record))
    code, err, stdout = run_main(_reproduce(out, "fig1"), capsys)
    assert code == 0, err
    assert any("cannot be plotted" in line for line in err) and "fig1: computed" in stdout
    assert "kind" in json.loads(stored.read_text())["result"]


# ----------------------------------------------------------------------------------------------
# stopping a run: Ctrl-C, SIGTERM, SIGKILL, a lost scheduler


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM"])
def test_an_interrupted_run_says_what_is_kept_in_one_line_and_leaves_no_process(how, nets):
    out = nets / f"stopped-{how}"
    run = start_long_analysis(nets, out, "--backend", "local", "--workers", "2")
    tree = descendants(run.pid)
    if how == "SIGINT":  # Ctrl-C reaches the whole foreground process group
        os.killpg(run.pid, signal.SIGINT)
    else:
        run.send_signal(signal.SIGTERM)
    _, stderr = run.communicate(timeout=60)
    assert run.returncode == 130, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("reluinv: interrupted; ") and str(out / "work") in lines[0]
    kept = int(lines[0].split("; ")[1].split(" of ")[0])
    assert kept >= 3 and f"of {LONG_RUN_SAMPLES} samples are kept" in lines[0]
    assert wait_until_gone(tree) == []


def test_a_killed_run_leaves_no_process_behind(nets):
    out = nets / "killed"
    run = start_long_analysis(nets, out, "--backend", "local", "--workers", "2")
    tree = descendants(run.pid)
    assert len(tree) >= 3  # fork server, resource tracker, workers
    run.kill()
    run.communicate(timeout=60)
    assert wait_until_gone(tree) == []


@pytest.fixture
def dask_cluster(tmp_path):
    """A Dask scheduler and one worker, each a process of its own that a test may kill."""
    address = f"tcp://127.0.0.1:{free_port()}"
    dask = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
    logs = open(tmp_path / "dask.log", "w")
    scheduler = subprocess.Popen(
        [*dask, "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1], "--no-dashboard"],
        stdout=logs,
        stderr=logs,
    )
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "distributed.cli.dask_worker",
            address,
            "--nthreads",
            "1",
            "--nworkers",
            "1",
            "--no-dashboard",
        ],
        env=subprocess_env(tmp_path),
        cwd=tmp_path,
        stdout=logs,
        stderr=logs,
    )
    yield address, scheduler
    for process in (worker, scheduler):
        if process.poll() is None:
            process.terminate()
    for process in (worker, scheduler):
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
    logs.close()


def test_a_lost_scheduler_is_one_line_naming_it_and_what_is_kept(nets, dask_cluster):
    address, scheduler = dask_cluster
    out = nets / "lost"
    # Dask's client tries to reconnect for 10 s by default; 3 s is enough to tell.
    run = start_long_analysis(
        nets, out, "--scheduler", address, DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT="3s"
    )
    scheduler.kill()
    _, stderr = run.communicate(timeout=180)
    assert run.returncode == 2, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"reluinv: error: lost the Dask scheduler at {address}")
    assert f"of {LONG_RUN_SAMPLES} samples are kept in {out / 'work'}" in lines[0]
    assert "run the same command again to resume" in lines[0]
    kept = int(lines[0].split("; ")[1].split(" of ")[0])
    assert kept >= 3
