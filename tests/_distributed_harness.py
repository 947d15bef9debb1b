"""Shared by the fault tests: start-up clean-up and killing one of several local ranks."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time

from gpkern.distributed import group


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
    procs[victim].send_signal(signal.SIGKILL)
    t0 = time.monotonic()
    codes = group.wait_local_ranks(procs, deadline=deadline)
    return codes, time.monotonic() - t0
