"""Process-group plumbing (gloo, 127.0.0.1): torchrun environment, timeouts, dead ranks, and
ranks that disagree on the problem. Ranks run as subprocesses with torchrun's environment
(``group.start_local_ranks``); this file is also their script (``python THIS worker MODE``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from _distributed_harness import kill_rank_and_wait, local_ranks
from gpkern.distributed import group

TIMEOUT = 3.0  # the process-group timeout the workers use
ROOT = Path(__file__).resolve().parents[1]


def _worker(mode: str) -> int:
    """One rank: join the job, agree on the problem, then loop on all-reduces."""
    import torch.distributed as dist

    info = group.init_from_env(timeout=TIMEOUT)
    d, dtype = 3, torch.float64
    if mode == "disagree" and info.rank == 2:
        d = 4
    if mode == "disagree" and info.rank == 1:
        dtype = torch.float32
    try:
        group.check_agreement(n=100, d=d, dtype=dtype, t=1, timeout=TIMEOUT)
    except group.DisagreementError as err:
        print(f"DisagreementError: {err}", file=sys.stderr, flush=True)
        group.destroy(info)
        return 4
    print("started", flush=True)
    x = torch.ones(1000, dtype=torch.float64)
    end = time.monotonic() + 60
    try:
        while time.monotonic() < end:
            if mode == "raise" and info.rank == 1:
                raise RuntimeError("rank 1 stops on an error of its own")
            with group.guard("the loop's all-reduce", timeout=info.timeout):
                dist.all_reduce(x)
                x.fill_(1.0)
    except group.RankFailureError as err:
        print(f"RankFailureError: {err}", file=sys.stderr, flush=True)
        group.destroy(info)  # a broken gloo group left to the interpreter's exit aborts it
        return 3
    group.destroy(info)
    return 0


def _start(mode: str, nproc: int = 3) -> list[subprocess.Popen]:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("GPKERN_DIST_TIMEOUT", None)
    return group.start_local_ranks(
        [sys.executable, __file__, "worker", mode], nproc, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _wait_started(procs, deadline=60.0):
    for p in procs:  # every rank prints "started" once the agreement check passed
        line = p.stdout.readline()
        assert line.strip() == "started", (line, p.poll())
    assert all(p.poll() is None for p in procs)


@pytest.mark.parametrize("victim", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_killed_rank_ends_every_rank_within_timeout(victim):
    """SIGKILL one of three ranks in the middle of a collective loop (rank 0 also hosts the
    rendezvous store): the two others exit with a RankFailureError, none hangs."""
    with local_ranks(_start("loop")) as procs:
        _wait_started(procs)
        time.sleep(0.5)
        codes, elapsed = kill_rank_and_wait(procs, victim, deadline=TIMEOUT + 15)
    assert codes[victim] == -signal.SIGKILL
    for r, p in enumerate(procs):
        if r == victim:
            continue
        err = p.stderr.read()
        assert codes[r] == 3, (r, codes, err[-2000:])
        assert f"RankFailureError: rank {r}: exchanging the loop's all-reduce" in err, err
        assert "died, hung for more than timeout=3 s" in err, err
    assert elapsed < TIMEOUT + 15


def test_rank_stopping_on_an_error_ends_the_others():
    procs = _start("raise")
    codes = group.wait_local_ranks(procs, deadline=60)
    errs = [p.stderr.read() for p in procs]
    assert codes[1] not in (0, None) and "stops on an error of its own" in errs[1]
    for r in (0, 2):
        assert codes[r] == 3, (r, codes, errs[r][-2000:])
        assert "RankFailureError" in errs[r]


def test_disagreeing_ranks_are_named_on_every_rank_before_any_work():
    procs = _start("disagree")  # rank 1 has float32 data, rank 2 one feature more
    codes = group.wait_local_ranks(procs, deadline=60)
    outs = [p.stdout.read() for p in procs]
    errs = [p.stderr.read() for p in procs]
    assert codes == [4, 4, 4], (codes, errs)
    for out, err in zip(outs, errs):
        assert "started" not in out  # refused before the work loop
        assert ("rank 2 disagrees on the number of features d: rank 0 has 3, rank 1 has 3, "
                "rank 2 has 4") in err, err
        assert "rank 1 disagrees on the dtype: rank 0 has float64, rank 1 has float32, " in err


def test_check_agreement_without_a_group_and_unsupported_dtypes():
    group.check_agreement(10, 2, torch.float64, t=2)  # one rank: nothing to disagree with
    group.check_agreement(10, 2, "float32")
    import numpy as np

    group.check_agreement(10, 2, np.float64)


def test_resolve_timeout_reads_argument_then_environment(monkeypatch):
    monkeypatch.delenv(group.TIMEOUT_ENV, raising=False)
    assert group.resolve_timeout() == group.DEFAULT_TIMEOUT
    assert group.resolve_timeout(7) == 7.0
    monkeypatch.setenv(group.TIMEOUT_ENV, "12.5")
    assert group.resolve_timeout() == 12.5
    assert group.resolve_timeout(2) == 2.0
    monkeypatch.setenv(group.TIMEOUT_ENV, "soon")
    with pytest.raises(ValueError, match="GPKERN_DIST_TIMEOUT must be a number"):
        group.resolve_timeout()
    for bad in (0, -1.0, float("inf"), True):
        with pytest.raises(ValueError, match="positive number of seconds"):
            group.resolve_timeout(bad)


def test_init_from_env_names_the_missing_variables(monkeypatch):
    for v in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(RuntimeError, match="WORLD_SIZE, MASTER_ADDR, MASTER_PORT not set"):
        group.init_from_env(timeout=1)


@pytest.mark.skipif(torch.cuda.device_count() > 2, reason="needs a machine with at most 2 GPUs")
def test_nccl_refuses_a_local_rank_without_its_gpu(monkeypatch):
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("LOCAL_RANK", "2")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "1")
    with pytest.raises(RuntimeError, match=r"LOCAL_RANK=2 but this machine has \d CUDA device"):
        group.init_from_env(timeout=1, backend="nccl")
    import torch.distributed as dist

    assert not dist.is_initialized()


def test_init_group_world_size_one_and_bad_ranks():
    with pytest.raises(ValueError, match="only rank is rank 0"):
        group.init_group("tcp://127.0.0.1:1", 1, 1)
    with pytest.raises(ValueError, match="world_size"):
        group.init_group("tcp://127.0.0.1:1", 0, 0)
    info = group.init_group(f"tcp://127.0.0.1:{group.free_port()}", 0, 1, timeout=10)
    try:
        assert (info.rank, info.world_size, info.backend, info.created) == (0, 1, "gloo", True)
        assert info.device == torch.device("cpu")
        again = group.init_from_env()  # an existing group is joined as it is
        assert not again.created and again.world_size == 1
        group.destroy(again)  # not ours to end
        import torch.distributed as dist

        assert dist.is_initialized()
    finally:
        group.destroy(info)


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    torch.set_num_threads(1)
    raise SystemExit(_worker(sys.argv[2]))
