"""The per-sample result and the append-only, locked JSON-lines store that makes runs resumable."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

try:  # POSIX only; elsewhere the store simply is not locked against a second writer.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

SampleKey = str | int


@dataclass(frozen=True)
class SampleResult:
    """The outcome of one sample.

    Attributes:
        key: the sample's key (its position for sequence input, its mapping key otherwise).
        status: ``"ok"`` or ``"failed"``.
        result: what ``fn`` returned, as read back from JSON (``None`` when failed).
        error: ``"ExceptionType: message"`` when failed, else ``None``.
        traceback: the formatted traceback of a failure, for debugging; not part of equality.
    """

    key: SampleKey
    status: Literal["ok", "failed"]
    result: dict[str, Any] | None = None
    error: str | None = None
    traceback: str | None = field(default=None, compare=False, repr=False)

    @property
    def ok(self) -> bool:
        """True when ``fn`` returned normally."""
        return self.status == "ok"


class ResultStore:
    """Append-only JSON-lines file of sample results; the basis for resuming an interrupted run.

    One line per finished sample: ``{"key", "status", "fn", "result" | "error", "traceback"}``.
    Each line is written with a single ``write``, then flushed and fsync'd, so a killed run leaves
    at most one torn line at the end.  Only newline-terminated lines count: a torn last line is
    ignored by :meth:`load` and cut off by :meth:`open` before anything is appended.  When a key
    appears more than once (a failed sample that a later run retried) the last line wins.

    While open, the file is locked (``flock``) so that two runs cannot interleave their lines.

    Example::

        store = ResultStore("out/ranks.jsonl")
        done = store.load()                      # {key: SampleResult}
        with store.open():
            store.append(SampleResult(key=7, status="ok", result={"rank": 3}), fn_name="m.f")
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._handle: TextIO | None = None

    def __repr__(self) -> str:
        return f"ResultStore({str(self.path)!r})"

    def load(self, *, fn_name: str | None = None) -> dict[SampleKey, SampleResult]:
        """Return the latest result per key.

        Args:
            fn_name: when given, a stored ``"ok"`` result written by another function is an error
                (the same file was given to two different analyses).

        Raises:
            ValueError: a complete line that is not a valid record, or a function mismatch.
        """
        if not self.path.exists():
            return {}
        text = self.path.read_text(encoding="utf-8")
        complete_lines = text.split("\n")[:-1]  # the piece after the last newline is torn or empty
        latest: dict[SampleKey, SampleResult] = {}
        for number, line in enumerate(complete_lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                sample = SampleResult(
                    key=check_key(record["key"]),
                    status=record["status"],
                    result=record.get("result"),
                    error=record.get("error"),
                    traceback=record.get("traceback"),
                )
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{self.path}, line {number}: not a reluinv result record ({exc})") from exc
            if sample.status not in ("ok", "failed"):
                raise ValueError(f"{self.path}, line {number}: unknown status {sample.status!r}")
            stored_fn = record.get("fn")
            if fn_name is not None and sample.ok and stored_fn is not None and stored_fn != fn_name:
                raise ValueError(
                    f"{self.path} holds results of {stored_fn}, not of {fn_name}; "
                    "use a separate store per analysis or delete this one"
                )
            latest[sample.key] = sample
        return latest

    def open(self) -> ResultStore:
        """Open for appending (usable as a context manager); cuts off a torn last line first."""
        if self._handle is not None:
            raise RuntimeError(f"{self} is already open")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+", encoding="utf-8")
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise RuntimeError(f"{self.path} is in use by another reluinv run") from None
            self._cut_torn_tail(handle)
        except BaseException:
            handle.close()
            raise
        self._handle = handle
        return self

    @property
    def is_open(self) -> bool:
        """True between :meth:`open` and :meth:`close`."""
        return self._handle is not None

    def append(self, sample: SampleResult, *, fn_name: str | None = None) -> None:
        """Write one record and make it durable before returning."""
        if self._handle is None:
            raise RuntimeError(f"{self} is not open; use `with store.open():`")
        record: dict[str, Any] = {"key": sample.key, "status": sample.status, "fn": fn_name}
        if sample.ok:
            record["result"] = sample.result
        else:
            record["error"] = sample.error
            record["traceback"] = sample.traceback
        self._handle.write(json.dumps(record) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        """Close the file and release the lock (closing the descriptor releases ``flock``)."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> ResultStore:
        if self._handle is None:
            self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @staticmethod
    def _cut_torn_tail(handle: TextIO) -> None:
        # Work on bytes: text-mode seek offsets are opaque and a torn UTF-8 sequence may not decode.
        fd = handle.fileno()
        size = os.fstat(fd).st_size
        if size == 0:
            return
        with open(fd, "rb", closefd=False) as raw:  # "a+" starts at the end: seek explicitly
            raw.seek(size - 1)
            if raw.read(1) == b"\n":
                return
            raw.seek(0)
            keep = raw.read().rfind(b"\n") + 1
        os.ftruncate(fd, keep)
        os.fsync(fd)
        handle.seek(0, os.SEEK_END)


def check_key(key: Any) -> SampleKey:
    """``key`` when it is a valid sample key (``str`` or ``int``, not ``bool``)."""
    if isinstance(key, bool) or not isinstance(key, (str, int)):
        raise ValueError(f"sample keys must be str or int, got {key!r} ({type(key).__name__})")
    return key
