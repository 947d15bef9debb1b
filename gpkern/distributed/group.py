r"""Process-group plumbing for gpkern's ``torch.distributed`` code: one place for it.

Everything that starts, checks or tears down a process group lives here, so that every
distributed entry point (:mod:`gpkern.distributed.slimkl`, :mod:`gpkern.distributed.gp`, the
row-partitioned exact GP) fails the same way:

* :func:`init_from_env` joins the job ``torchrun`` describes in the environment (``RANK``,
  ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``, ``LOCAL_RANK``), with gloo on CPU and nccl on
  CUDA, one device per rank from ``LOCAL_RANK``; :func:`init_group` starts one from an explicit
  ``init_method``.
* Every group has a timeout (:func:`resolve_timeout`: the argument, else the environment
  variable ``GPKERN_DIST_TIMEOUT``, else :data:`DEFAULT_TIMEOUT` seconds). A rank that dies or
  hangs makes the others' next collective fail within the timeout; :func:`guard` turns that
  failure into a :class:`RankFailureError` that says what happened.
* :func:`check_agreement` all-gathers the problem's shape (``n``, ``d``, ``dtype``, ``t``) and
  raises :class:`DisagreementError` on every rank, naming the odd ranks, before any work.
* :func:`launch` (functions, ``torch.multiprocessing``) and :func:`start_local_ranks` (commands,
  subprocesses with torchrun's environment) run :math:`P` local ranks for tests and for the
  command lines' ``--nproc``.

Examples
--------
Inside ``torchrun --nproc-per-node 2 script.py``::

    from gpkern.distributed import group

    info = group.init_from_env(timeout=120)
    group.check_agreement(n=X.shape[0], d=X.shape[1], dtype=X.dtype, t=1)
    ...
    group.destroy(info)
"""

from __future__ import annotations

import datetime
import math
import os
import queue as queue_module
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

__all__ = [
    "DEFAULT_TIMEOUT",
    "TIMEOUT_ENV",
    "DisagreementError",
    "GroupInfo",
    "RankFailureError",
    "RendezvousError",
    "check_agreement",
    "destroy",
    "free_port",
    "gloo_group",
    "guard",
    "init_from_env",
    "is_communication_error",
    "init_group",
    "launch",
    "resolve_timeout",
    "start_local_ranks",
    "torchrun_env_present",
    "wait_local_ranks",
]

#: Seconds a collective or the rendezvous may wait for the other ranks.
DEFAULT_TIMEOUT = 300.0
#: Environment variable overriding :data:`DEFAULT_TIMEOUT` (seconds).
TIMEOUT_ENV = "GPKERN_DIST_TIMEOUT"
_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
# Fixed codes so that ranks compare dtypes as integers; anything else is refused up front.
_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


class RankFailureError(RuntimeError):
    """Another rank died, hung past the timeout, or stopped on an error."""


class RendezvousError(RuntimeError):
    """The ``torch.distributed`` rendezvous could not be reached within the timeout."""


class DisagreementError(ValueError):
    """Ranks were given problems of different shapes or dtypes."""


@dataclass(frozen=True)
class GroupInfo:
    """Where this process stands in its process group.

    Attributes
    ----------
    rank, world_size, local_rank : int
        Global rank, number of ranks, rank on this machine.
    backend : str
        ``"gloo"`` or ``"nccl"``.
    device : torch.device
        This rank's device: ``cuda:LOCAL_RANK`` under nccl, else the CPU.
    timeout : float
        The group's timeout in seconds.
    created : bool
        Whether this call initialised the group (and so :func:`destroy` should end it).
    """

    rank: int
    world_size: int
    local_rank: int
    backend: str
    device: torch.device
    timeout: float
    created: bool


def resolve_timeout(timeout: float | None = None) -> float:
    """The timeout in seconds: ``timeout``, else ``$GPKERN_DIST_TIMEOUT``, else the default."""
    source = "timeout"
    if timeout is None:
        raw = os.environ.get(TIMEOUT_ENV)
        if raw is None:
            return DEFAULT_TIMEOUT
        source = TIMEOUT_ENV
        try:
            timeout = float(raw)
        except ValueError:
            raise ValueError(f"{TIMEOUT_ENV} must be a number of seconds, got {raw!r}.") from None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not (
        math.isfinite(timeout) and timeout > 0
    ):
        raise ValueError(f"{source} must be a positive number of seconds, got {timeout!r}.")
    return float(timeout)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for local rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_env_present() -> bool:
    """Whether ``RANK`` and ``WORLD_SIZE`` are set, as ``torchrun`` sets them."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _first_line(err: BaseException) -> str:
    text = str(err)
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"


def init_group(
    init_method: str,
    rank: int,
    world_size: int,
    timeout: float | None = None,
    backend: str = "gloo",
    noun: str = "rank",
) -> GroupInfo:
    """Initialise the default process group from an explicit rendezvous address.

    Parameters
    ----------
    init_method : str
        E.g. ``"tcp://127.0.0.1:29500"``.
    rank, world_size : int
        This process's rank and the number of ranks.
    timeout : float, optional
        Seconds for the rendezvous and every collective (:func:`resolve_timeout`).
    backend : str, default="gloo"
        ``torch.distributed`` backend.
    noun : str, default="rank"
        What the caller calls a rank in error messages (``"agent"`` for SLIM-KL).

    Returns
    -------
    GroupInfo

    Raises
    ------
    ValueError
        ``rank`` or ``world_size`` out of range.
    RendezvousError
        Nobody answered at ``init_method`` within the timeout.
    """
    timeout = resolve_timeout(timeout)
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be an integer >= 1, got {world_size!r}.")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(
            f"rank must be an integer in [0, world_size) = [0, {world_size}), got {rank!r}"
            + (f" (with world_size=1 the only {noun} is rank 0)." if world_size == 1 else ".")
        )
    try:
        dist.init_process_group(
            backend=backend, init_method=init_method, rank=rank, world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout),
        )
    except Exception as err:
        raise RendezvousError(
            f"{noun} {rank}: could not reach the rendezvous {init_method!r} with {world_size} "
            f"{noun}s within timeout={timeout:g} s. Check the address and port, that rank 0 is "
            f"running and that every {noun} uses the same world_size. ({_first_line(err)})"
        ) from err
    return GroupInfo(rank, world_size, rank, backend, torch.device("cpu"), timeout, True)


def init_from_env(timeout: float | None = None, backend: str | None = None) -> GroupInfo:
    """Join the job that ``torchrun`` (or :func:`start_local_ranks`) set up in the environment.

    Reads ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT`` and ``LOCAL_RANK``. The
    backend is nccl when CUDA is available (each rank on ``cuda:LOCAL_RANK``, made the current
    device) and gloo otherwise. If a default group already exists it is used as it is.

    Parameters
    ----------
    timeout : float, optional
        Seconds for the rendezvous and every collective (:func:`resolve_timeout`).
    backend : {"gloo", "nccl"}, optional
        Force a backend (e.g. gloo on a CUDA machine to compute on CPUs).

    Returns
    -------
    GroupInfo

    Raises
    ------
    RuntimeError
        A torchrun variable is missing or malformed (named in the message).
    RendezvousError
        The rendezvous did not complete within the timeout.
    """
    timeout = resolve_timeout(timeout)
    if dist.is_available() and dist.is_initialized():
        bk = str(dist.get_backend())
        local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
        return GroupInfo(dist.get_rank(), dist.get_world_size(), local, bk, _device(bk, local),
                         timeout, False)
    missing = [v for v in _TORCHRUN_VARS if v not in os.environ]
    if missing:
        raise RuntimeError(
            f"No torchrun environment: {', '.join(missing)} not set. Start the script with "
            "`torchrun --nproc-per-node P ...`, or set RANK, WORLD_SIZE, MASTER_ADDR and "
            "MASTER_PORT (LOCAL_RANK for the device) yourself."
        )
    try:
        rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))
    except ValueError:
        raise RuntimeError(
            "RANK, WORLD_SIZE and LOCAL_RANK must be integers, got "
            + ", ".join(f"{v}={os.environ.get(v)!r}" for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
        ) from None
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    device = _device(backend, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    try:
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout))
    except Exception as err:
        raise RendezvousError(
            f"rank {rank}: could not join the {world_size}-rank job at {where} within "
            f"timeout={timeout:g} s. Check MASTER_ADDR/MASTER_PORT (or --rdzv-endpoint), that "
            f"every node was started and can reach it. ({_first_line(err)})"
        ) from err
    return GroupInfo(rank, world_size, local_rank, backend, device, timeout, True)


def _device(backend: str, local_rank: int) -> torch.device:
    if backend == "nccl":
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"LOCAL_RANK={local_rank} but this machine has {torch.cuda.device_count()} CUDA "
                "device(s): start at most that many processes per node (--nproc-per-node)."
            )
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def gloo_group(timeout: float | None = None):
    """A new gloo group over all ranks of the default group, with its own timeout.

    For CPU-side collectives (small control messages) next to an nccl default group, or for a
    library call that must not inherit the caller's timeout. Collective: every rank calls it.
    """
    return dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=resolve_timeout(timeout)))


def destroy(info: GroupInfo | None = None) -> None:
    """End the default group if ``info`` says this process created it (or ``info`` is None)."""
    if (info is None or info.created) and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def guard(
    what: str,
    *,
    timeout: float,
    rank: int | None = None,
    world_size: int | None = None,
    noun: str = "rank",
    where: str = "",
    error: type[RankFailureError] = RankFailureError,
    convert: Callable[[BaseException], bool] | None = None,
) -> Iterator[None]:
    """Turn a failed collective into a :class:`RankFailureError` that says what happened.

    gloo and nccl report a dead peer as a connection reset or a timeout, in words about
    sockets; a user needs to hear that another rank died or hung, and where to look.

    Parameters
    ----------
    what : str
        What was being exchanged (``"'status'"``, ``"the CG residuals"``).
    timeout : float
        The group's timeout, quoted in the message.
    rank, world_size : int, optional
        Defaults to the default group's.
    noun : str, default="rank"
        What a rank is called in the message.
    where : str, optional
        When it happened (``"in round 3"``).
    error : type, default=RankFailureError
        Subclass to raise.
    convert : callable, optional
        Which exceptions to convert (default all): around code that does more than
        communicate, :func:`is_communication_error` leaves the code's own errors as they are.

    Examples
    --------
    >>> from gpkern.distributed.group import guard
    >>> with guard("the residual norms", timeout=60.0, rank=0, world_size=1):
    ...     pass
    """
    try:
        yield
    except RankFailureError:
        raise
    except Exception as err:  # gloo raises RuntimeError / DistBackendError subclasses
        if convert is not None and not convert(err):
            raise
        if rank is None:
            rank = dist.get_rank() if dist.is_initialized() else 0
        if world_size is None:
            world_size = dist.get_world_size() if dist.is_initialized() else 1
        article = "an" if noun[:1] in "aeiou" else "a"
        raise error(
            f"{noun} {rank}: exchanging {what} with the other {world_size - 1} {noun}(s) failed"
            f"{' ' + where if where else ''}: {article} {noun} died, hung for more than "
            f"timeout={timeout:g} s, or stopped on an error. Check the other {noun}s' logs. "
            f"({_first_line(err)})"
        ) from err


_COMM_WORDS = ("gloo", "nccl", "connection reset", "connection closed", "connection refused",
               "timed out", "timeout", "broken pipe", "socket", "store")


def is_communication_error(err: BaseException) -> bool:
    """Whether ``err`` reads like a failed collective (a dead, hung or unreachable rank).

    ``torch.distributed`` raises :class:`torch.distributed.DistError` subclasses for some of
    these and plain :class:`RuntimeError` with a transport message (gloo's "Connection closed
    by peer") for others.
    """
    if isinstance(err, getattr(dist, "DistError", ())):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and any(w in text for w in _COMM_WORDS)


def _dtype_code(dtype) -> int:
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None) or np.dtype(dtype)
    if not isinstance(dtype, torch.dtype):
        dtype = torch.from_numpy(np.empty(0, dtype=np.dtype(dtype))).dtype
    return _DTYPES.index(dtype) if dtype in _DTYPES else -1


def check_agreement(
    n: int,
    d: int,
    dtype,
    t: int = 1,
    *,
    group=None,
    timeout: float | None = None,
    what: str = "training",
) -> None:
    r"""Refuse, on every rank and before any work, ranks that disagree on the problem.

    All-gathers :math:`(n, d, \text{dtype}, t)` (4 integers per rank) and raises the same
    :class:`DisagreementError` on every rank when any entry differs, naming the ranks that
    differ from the majority and every rank's value.

    Parameters
    ----------
    n : int
        Number of training points.
    d : int
        Number of features.
    dtype : torch.dtype, numpy dtype or str
        The floating dtype of the data (float64, float32, float16 or bfloat16).
    t : int, default=1
        Number of outputs (target columns).
    group : ProcessGroup, optional
        Defaults to the default group. Under nccl the 4 integers travel on this rank's GPU.
    timeout : float, optional
        Quoted if the exchange fails (:func:`guard`); the group's own timeout applies.
    what : str, default="training"
        Which data set ``n`` counts, for the message (``"test"``).

    Raises
    ------
    DisagreementError
        Some ranks' values differ, or a dtype is not a floating type.
    RankFailureError
        The exchange itself failed (another rank died or hung).

    Examples
    --------
    >>> import torch
    >>> from gpkern.distributed.group import check_agreement
    >>> check_agreement(100, 3, torch.float64)  # no process group: one rank, nothing to check
    """
    code = _dtype_code(dtype)
    local = [int(n), int(d), code, int(t)]
    if not (dist.is_available() and dist.is_initialized()):
        rows = [local]
    else:
        world = dist.get_world_size(group)
        on = torch.device("cuda", torch.cuda.current_device()) if (
            dist.get_backend(group) == "nccl") else torch.device("cpu")
        mine = torch.tensor(local, dtype=torch.int64, device=on)
        out = [torch.empty_like(mine) for _ in range(world)]
        with guard("the problem shape (n, d, dtype, t)", timeout=resolve_timeout(timeout)):
            dist.all_gather(out, mine, group=group)
        rows = [o.tolist() for o in out]
    problems = []
    names = {i: str(dt).replace("torch.", "") for i, dt in enumerate(_DTYPES)}
    names[-1] = "an unsupported dtype"
    labels = (f"the number of {what} points n", "the number of features d", "the dtype",
              "the number of outputs t")
    for j, label in enumerate(labels):
        values = [row[j] for row in rows]
        show = (lambda v: names[v]) if j == 2 else str
        if len(set(values)) > 1:
            counts = {v: values.count(v) for v in values}
            # The majority is "right"; on a tie, rank 0's value.
            ref = max(counts, key=lambda v: (counts[v], v == values[0]))
            odd = [r for r, v in enumerate(values) if v != ref]
            problems.append(
                f"rank{'s' if len(odd) > 1 else ''} {', '.join(map(str, odd))} disagree"
                f"{'s' if len(odd) == 1 else ''} on {label}: "
                + ", ".join(f"rank {r} has {show(v)}" for r, v in enumerate(values))
            )
    bad_dtype = [r for r, row in enumerate(rows) if row[2] < 0]
    if bad_dtype and not problems:
        problems.append(
            f"rank{'s' if len(bad_dtype) > 1 else ''} {', '.join(map(str, bad_dtype))} "
            "passed a dtype that is not float64, float32, float16 or bfloat16"
        )
    if problems:
        raise DisagreementError(
            "The ranks cannot start: " + "; ".join(problems)
            + ". Every rank must be given the same data (same file, same dtype)."
        )


# -- local launchers ----------------------------------------------------------------------------
def _bootstrap(rank, fn, nproc, init_method, args, results, threads):
    torch.set_num_threads(threads)
    try:
        out = fn(rank, nproc, init_method, *args)
        results.put((rank, "ok", out))
    except BaseException as err:  # report every failure to the parent, then exit non-zero
        results.put((rank, "error", (type(err).__name__, str(err))))
        raise SystemExit(1) from None


def launch(
    fn: Callable,
    nproc: int,
    args: tuple = (),
    *,
    deadline: float = 300.0,
    threads: int = 1,
) -> list[tuple[str, object]]:
    """Run ``fn(rank, world_size, init_method, *args)`` in ``nproc`` local processes.

    The processes rendezvous on a free loopback port (``tcp://127.0.0.1:PORT``). Returns one
    ``(status, value)`` per rank: ``("ok", return value)``, ``("error", (exception name,
    message))`` or ``("killed", None)`` for a process still running at ``deadline`` seconds
    (it is then terminated) or that exited without reporting.

    Parameters
    ----------
    fn : callable
        Importable (module-level) function.
    nproc : int
        Number of processes.
    args : tuple
        Extra picklable arguments.
    deadline : float, default=300.0
        Seconds to wait for all processes.
    threads : int, default=1
        Torch threads per process.

    Returns
    -------
    list of tuple
        Per-rank outcome.
    """
    import torch.multiprocessing as mp

    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"nproc must be an integer >= 1, got {nproc!r}.")
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    init_method = f"tcp://127.0.0.1:{free_port()}"
    procs = [
        ctx.Process(target=_bootstrap, args=(r, fn, nproc, init_method, args, results, threads),
                    daemon=True)
        for r in range(nproc)
    ]
    for p in procs:
        p.start()
    outcome: dict[int, tuple[str, object]] = {}
    end = time.monotonic() + deadline
    while len(outcome) < nproc and time.monotonic() < end:
        try:
            r, status, value = results.get(timeout=0.2)
            outcome[r] = (status, value)
        except queue_module.Empty:
            if all(not p.is_alive() for p in procs):
                # Drain what the exited processes managed to report.
                try:
                    while True:
                        r, status, value = results.get(timeout=0.5)
                        outcome[r] = (status, value)
                except queue_module.Empty:
                    break
    for p in procs:
        p.join(timeout=0.5)
        if p.is_alive():
            p.terminate()
            p.join(timeout=5)
    return [outcome.get(r, ("killed", None)) for r in range(nproc)]


def start_local_ranks(
    argv: Sequence[str],
    nproc: int,
    *,
    env: dict[str, str] | None = None,
    threads: int = 1,
    **popen_kwargs,
) -> list[subprocess.Popen]:
    """Start ``nproc`` copies of a command with the environment ``torchrun`` would give them.

    Each process gets ``RANK = LOCAL_RANK = r``, ``WORLD_SIZE = LOCAL_WORLD_SIZE = nproc``,
    ``MASTER_ADDR=127.0.0.1``, a free ``MASTER_PORT`` and ``OMP_NUM_THREADS=threads``, so that
    :func:`init_from_env` joins them into one job. The caller waits on (or kills) the returned
    processes.

    Parameters
    ----------
    argv : sequence of str
        The command, e.g. ``[sys.executable, "-m", "gpkern.distributed.gp", ...]``.
    nproc : int
        Number of ranks.
    env : dict, optional
        Base environment (default: this process's).
    threads : int, default=1
        ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` per rank.
    **popen_kwargs
        Passed to :class:`subprocess.Popen` (e.g. ``stdout=subprocess.PIPE``).

    Returns
    -------
    list of subprocess.Popen
        One per rank, in rank order.
    """
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"nproc must be an integer >= 1, got {nproc!r}.")
    base = dict(os.environ if env is None else env)
    port = str(free_port())
    procs = []
    for r in range(nproc):
        e = {**base, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(nproc),
             "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
             "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        procs.append(subprocess.Popen(list(argv), env=e, **popen_kwargs))
    return procs


def wait_local_ranks(
    procs: Sequence[subprocess.Popen], deadline: float | None = None
) -> list[int | None]:
    """Wait for all of ``procs``, at most ``deadline`` seconds; kill the rest.

    Returns each process's exit code (``None`` for one still running at the deadline, which is
    then killed). Without a deadline it waits for all: a rank that dies makes the others fail
    within their process group's timeout.
    """
    end = None if deadline is None else time.monotonic() + deadline
    codes: list[int | None] = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=None if end is None else max(0.0, end - time.monotonic())))
        except subprocess.TimeoutExpired:
            codes.append(None)
    for p, c in zip(procs, codes):
        if c is None:
            p.kill()
            p.wait()
    return codes

