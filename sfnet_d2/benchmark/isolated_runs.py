"""
Benchmark tasks run in a separate process (``projects/SFNet/benchmark.py``, docs/BENCHMARK.md).

Why: the optimised path's kept memory (memory.py) changes the C library's allocator for the whole
process, and the state it leaves (an untrimmed heap full of reusable blocks) outlives the call. A
plain model timed in the same process afterwards would run on that warm heap and look as fast as
if it had the optimisation itself (measured: eager SFNet-R18 at 1024x2048 2.96 s in the same
process, 4.5-4.8 s in a fresh one). The reference ``eager`` mode must be what a user running the
plain model gets, so the benchmark runs it in a fresh process (multiprocessing "spawn") that never
touches the allocator, and still interleaves its runs with the other modes' runs: each run is a
request over a pipe, timed in wall-clock time by the caller (the round trip costs well under a
millisecond) and in CPU time by the worker.
"""
import multiprocessing
import time
import traceback
from typing import Callable, Dict, NamedTuple, Tuple

import torch

__all__ = ["ExternalRun", "IsolatedTasks", "stop_worker"]


class ExternalRun(NamedTuple):
    """Returned by a task that ran in another process: its CPU time there (all its threads)."""

    cpu_seconds: float


def _worker(conn, tasks: Dict[str, Tuple[Callable, tuple]], threads: int):
    # imported here: the worker is a fresh interpreter
    from sfnet_d2.benchmark.timing import peak_memory_of

    torch.set_num_threads(threads)
    with torch.inference_mode():
        while True:
            request = conn.recv()
            if request is None:
                return
            kind, name = request
            try:
                fn, args = tasks[name]
                if kind == "run":
                    c0 = time.process_time()
                    fn(*args)
                    conn.send(("ok", time.process_time() - c0))
                else:  # "peak"
                    conn.send(("ok", peak_memory_of(lambda: fn(*args), torch.device("cpu"))))
            except Exception:  # reported to the caller, which raises it
                conn.send(("error", traceback.format_exc()))


def stop_worker(process, conn):
    """Ask a benchmark worker process to end (``None`` over its pipe), kill it if it has not
    within 30 s, close the pipe."""
    if process.is_alive():
        try:
            conn.send(None)
        except (BrokenPipeError, OSError):
            pass
        process.join(timeout=30)
        if process.is_alive():
            process.kill()
    conn.close()


class _IsolatedTask:
    def __init__(self, owner: "IsolatedTasks", name: str):
        self._owner, self.name = owner, name

    def __call__(self) -> ExternalRun:
        return ExternalRun(self._owner.request("run", self.name))

    def peak_memory(self) -> int:
        """Peak resident memory (bytes) of one run, measured inside the worker."""
        return int(self._owner.request("peak", self.name))


class IsolatedTasks:
    """
    CPU tasks ``{name: (function, args)}`` run in one fresh worker process. ``task(name)`` is a
    callable for :func:`round_robin` (returns :class:`ExternalRun`) with a ``peak_memory()``
    method for :func:`peak_memory_of`. Functions and arguments are pickled to the worker once
    (module-level functions, modules and tensors). Use as a context manager, or call close().
    """

    def __init__(self, tasks: Dict[str, Tuple[Callable, tuple]], threads: int):
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_worker, args=(child, tasks, threads), daemon=True)
        self._process.start()
        child.close()
        self.names = list(tasks)

    def task(self, name: str) -> _IsolatedTask:
        if name not in self.names:
            raise KeyError(f"no isolated task {name!r}; have {self.names}")
        return _IsolatedTask(self, name)

    def request(self, kind: str, name: str):
        try:
            self._conn.send((kind, name))
            status, value = self._conn.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError) as e:
            raise RuntimeError(
                f"The benchmark's isolated worker process (pid {self._process.pid}) died "
                f"(exit code {self._process.exitcode}) while running {name!r}"
            ) from e
        if status != "ok":
            raise RuntimeError(f"Isolated task {name!r} failed in the worker process:\n{value}")
        return value

    @property
    def pid(self) -> int:
        return self._process.pid

    def close(self):
        stop_worker(self._process, self._conn)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
