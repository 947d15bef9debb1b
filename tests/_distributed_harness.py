"""Run a function in P local processes joined by a gloo process group, never hanging.

``run_group(fn, world_size, *args)`` spawns ``world_size`` processes (``spawn`` context), each
joining a gloo group on 127.0.0.1 at a free port and calling ``fn(rank, world_size, *args)``
(a module-level, picklable function); it returns the results in rank order, or raises with the
failing rank's traceback. Every wait has a timeout and stragglers are terminated.
``run_here(fn, *args)`` runs one rank in this process. ``local_ranks`` and
``kill_rank_and_wait`` serve the fault tests, which start ranks as separate programs.
"""

from __future__ import annotations

import contextlib
import datetime
import multiprocessing as mp
import os
import pickle
import queue
import signal
import socket
import subprocess
import time
import traceback


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bootstrap(rank, world_size, port, fn, args, results, timeout):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    try:
        dist.init_process_group(
            "gloo",
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout),
        )
        try:
            # Plain pickle: a tensor put on the queue as such travels as a shared-memory handle
            # that dies with this process.
            results.put((rank, True, pickle.dumps(fn(rank, world_size, *args))))
        finally:
            dist.destroy_process_group()
    except BaseException:  # report everything: the parent must not wait for a dead rank
        results.put((rank, False, traceback.format_exc()))


def run_here(fn, *args, timeout: float = 120.0):
    """``fn(0, 1, *args)`` in this process, inside a one-process gloo group (no start-up cost)."""
    import torch.distributed as dist

    if dist.is_initialized():
        raise RuntimeError("this process already belongs to a process group.")
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{_free_port()}",
        rank=0,
        world_size=1,
        timeout=datetime.timedelta(seconds=timeout),
    )
    try:
        return fn(0, 1, *args)
    finally:
        dist.destroy_process_group()


def run_group(fn, world_size: int, *args, timeout: float = 120.0) -> list:
    """``[fn(rank, world_size, *args) for rank in range(world_size)]``, one process per rank."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = _free_port()
    procs = [
        ctx.Process(
            target=_bootstrap,
            args=(rank, world_size, port, fn, args, results, timeout),
            daemon=True,
        )
        for rank in range(world_size)
    ]
    for p in procs:
        p.start()
    out: dict[int, object] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(out) < world_size:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"{world_size - len(out)} of {world_size} ranks did not finish within "
                    f"{timeout:g} s."
                )
            try:
                rank, ok, value = results.get(timeout=min(left, 1.0))
            except queue.Empty:
                dead = [r for r, p in enumerate(procs) if p.exitcode not in (None, 0) and r not in out]
                if dead:
                    code = procs[dead[0]].exitcode
                    raise RuntimeError(f"rank {dead[0]} died with exit code {code}.") from None
                continue
            if not ok:
                raise RuntimeError(f"rank {rank} failed:\n{value}")
            out[rank] = pickle.loads(value)
    finally:
        for p in procs:
            p.join(timeout=5)
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
    return [out[r] for r in range(world_size)]


@contextlib.contextmanager
def local_ranks(procs: list[subprocess.Popen]):
    """Yield ``procs``; on the way out kill any rank still running, so no test leaks one."""
    try:
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def kill_rank_and_wait(procs: list[subprocess.Popen], victim: int, deadline: float):
    """SIGKILL ``procs[victim]`` and wait for every rank (at most ``deadline`` seconds).

    Returns the exit codes and the seconds from the kill until the last rank ended.
    """
    from gpkern.distributed import group

    procs[victim].send_signal(signal.SIGKILL)
    t0 = time.monotonic()
    codes = group.wait_local_ranks(procs, deadline=deadline)
    return codes, time.monotonic() - t0
