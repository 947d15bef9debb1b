r"""SLIM-KL: sparse linear multiple kernel learning across agents, on ``torch.distributed``.

Each agent :math:`j = 1, \dots, J` keeps its data :math:`(X_j, y_j)` and the agents jointly
minimise the sum of their local SCA objectives (:mod:`gpkern.models.multiple_kernel`),

.. math::

    \min_{x \ge \ell} \sum_{j=1}^{J} F_j(x), \qquad
    F_j(x) = \operatorname{tr}\big(Y_j^\top C_j(x)^{-1} Y_j\big) + t \log|C_j(x)|, \quad
    C_j(x) = \sum_a \theta_a K_{j,a} + s I,

over the shared weights and noise :math:`x = (\theta, s)`, by consensus ADMM (scaled form):

.. math::

    x_j^{k+1} &\approx \arg\min_{x \ge \ell} F_j(x) + \tfrac{\rho}{2}\|x - z^k + u_j^k\|^2
        \quad \text{(a few SCA iterations, warm-started)}, \\
    \hat m_j^{k+1} &= \hat m_j^{k} + Q\big(x_j^{k+1} + u_j^k - \hat m_j^{k}\big), \qquad
    z^{k+1} = \max\Big(\ell, \tfrac1J \textstyle\sum_j \hat m_j^{k+1}\Big), \qquad
    u_j^{k+1} = u_j^k + x_j^{k+1} - z^{k+1},

with :math:`\rho` adapted by residual balancing (Boyd et al., 2011, §3.4.1) and :math:`Q` a
``bits``-bit stochastic-rounding quantiser over the message's own range
:math:`[\min m, \max m]`: :math:`Q(m) = \text{lo} + \Delta \lfloor (m - \text{lo})/\Delta + \xi
\rfloor`, :math:`\xi \sim U[0, 1)`, :math:`\Delta = (\text{hi} - \text{lo})/(2^b - 1)`, which is
unbiased with error below :math:`\Delta`. Each agent sends only the change of its message
against the last value every agent reconstructed (:math:`\hat m_j^0 = 0`): the quantiser's
range, and so its error, shrinks as the iteration converges, so that weights many orders of
magnitude apart (a trend next to faint periodicities) survive 8- or 16-bit messages.

What crosses the wire: per round, each agent contributes one integer code vector of the size of
:math:`x` (one byte per entry up to 8 bits, two up to 15 bits, four beyond) and a three-float
header (range and last primal residual). Before the first round the agents exchange a status
vector, the per-dimension input ranges and spacings (to place one common GSMP grid) and the
target sums for a common normalisation. Raw data never leave an agent; :attr:`SlimKLResult.messages`
lists every tensor an agent sent.

The same code runs on 1 to N processes: call :func:`fit` in every process of an initialised
``torch.distributed`` job (``torchrun``), let it initialise one (``init_method``, ``rank``,
``world_size``), or run it without ``torch.distributed`` as a single agent. From a shell::

    python -m gpkern.distributed.slimkl --nproc 4 --data series.csv --out theta.npz
    torchrun --nproc-per-node 4 -m gpkern.distributed.slimkl --data series.csv --out theta.npz

Collectives use a dedicated gloo group with a timeout: an agent that dies or hangs makes the
others raise :class:`AgentFailureError` within ``timeout`` seconds instead of waiting forever.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist

from gpkern.distributed import group as pg
from gpkern.distributed.group import RankFailureError, RendezvousError, launch
from gpkern.kernels.gsmp import GSMPKernel
from gpkern.kernels.multiple import WeightedKernelSum
from gpkern.models.multiple_kernel import NOISE_FLOOR_HINT, _Blocks, sca_fit
from gpkern.models.training import (
    BOUND_RTOL,
    BoundHit,
    OptimizeResult,
    warn_at_bounds,
    warn_if_unconverged,
)

__all__ = [
    "AgentFailureError",
    "RendezvousError",
    "SlimKLResult",
    "quantize",
    "dequantize",
    "fit",
    "launch",
    "main",
]


class AgentFailureError(RankFailureError):
    """Another agent died, hung past the timeout, or reported an error."""


@dataclass
class SlimKLResult:
    """Outcome of :func:`fit` on one agent (the consensus is the same on every agent).

    Attributes
    ----------
    weights : ndarray of shape (A,)
        Consensus kernel weights :math:`\\theta` (exact zeros where the consensus is clipped).
    noise : float
        Consensus noise variance (normalised units when ``normalize_y``).
    kernel : WeightedKernelSum
        The kernel with the consensus weights (GSMP grid shared by all agents).
    objective : float
        :math:`\\sum_j F_j` at the consensus (all agents' data, summed by all-reduce).
    n_rounds : int
        ADMM rounds run.
    converged : bool
        Whether the primal and dual residuals met the tolerance.
    bytes_per_round : int
        Bytes this agent contributes to the collectives in one ADMM round.
    bytes_setup : int
        Bytes this agent sent before the first round (status, grid and target statistics).
    bytes_sent : int
        Total bytes this agent sent.
    quantization_step : float
        Largest quantiser step :math:`\\Delta` among the last round's messages.
    primal_residuals, dual_residuals, rhos : list of float
        Per-round ADMM diagnostics.
    messages : list of tuple
        ``(round, name, shape, dtype, nbytes)`` of every tensor this agent sent.
    wall_time : float
        Seconds spent in :func:`fit`.
    rank, world_size : int
        This agent's rank and the number of agents.
    y_mean, y_std : ndarray of shape (t,)
        The global target normalisation (all agents).
    """

    weights: np.ndarray
    noise: float
    kernel: WeightedKernelSum
    objective: float
    n_rounds: int
    converged: bool
    bytes_per_round: int
    bytes_setup: int
    bytes_sent: int
    quantization_step: float
    primal_residuals: list[float] = field(default_factory=list)
    dual_residuals: list[float] = field(default_factory=list)
    rhos: list[float] = field(default_factory=list)
    messages: list[tuple] = field(default_factory=list)
    wall_time: float = 0.0
    rank: int = 0
    world_size: int = 1
    y_mean: np.ndarray | None = None
    y_std: np.ndarray | None = None


# -- quantisation ------------------------------------------------------------------------------
def _code_dtype(bits: int) -> torch.dtype:
    return torch.uint8 if bits <= 8 else torch.int16 if bits <= 15 else torch.int32


def quantize(
    m: torch.Tensor,  # (k,)
    bits: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, float, float]:  # (k,) integer codes, lo, hi
    r"""Stochastic-rounding quantisation of a vector to ``bits`` bits over its own range.

    .. math::

        c_i = \Big\lfloor \frac{m_i - \text{lo}}{\Delta} + \xi_i \Big\rfloor, \qquad
        \Delta = \frac{\text{hi} - \text{lo}}{2^b - 1}, \quad \xi_i \sim U[0, 1),

    so that :math:`\mathbb{E}[\text{lo} + \Delta c_i] = m_i` and
    :math:`|\text{lo} + \Delta c_i - m_i| < \Delta`.

    Parameters
    ----------
    m : torch.Tensor of shape (k,)
        Values to send.
    bits : int
        Bits per entry, 1 to 31.
    generator : torch.Generator, optional
        Source of the rounding noise.

    Returns
    -------
    codes : torch.Tensor of shape (k,)
        Integer codes (``uint8``, ``int16`` or ``int32``).
    lo, hi : float
        The range, sent alongside the codes.

    Examples
    --------
    >>> import torch
    >>> from gpkern.distributed.slimkl import quantize, dequantize
    >>> m = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    >>> codes, lo, hi = quantize(m, 8)
    >>> dequantize(codes, lo, hi, 8)
    tensor([0.0000, 0.5000, 1.0000], dtype=torch.float64)
    """
    if not 1 <= int(bits) <= 31:
        raise ValueError(f"bits must be between 1 and 31, got {bits}.")
    lo, hi = float(m.min()), float(m.max())
    levels = 2 ** int(bits) - 1
    step = (hi - lo) / levels if hi > lo else 1.0
    xi = torch.rand(m.shape, generator=generator, dtype=torch.float64)
    codes = torch.floor((m.double() - lo) / step + xi).clamp(0, levels)
    return codes.to(_code_dtype(int(bits))), lo, hi


def dequantize(codes: torch.Tensor, lo: float, hi: float, bits: int) -> torch.Tensor:  # (k,) -> (k,)
    """Inverse of :func:`quantize` (up to the rounding): :math:`\\text{lo} + \\Delta c`."""
    levels = 2 ** int(bits) - 1
    step = (hi - lo) / levels if hi > lo else 1.0
    return lo + step * codes.to(torch.float64)


# -- communication -----------------------------------------------------------------------------
class _Channel:
    """All-gather over a gloo group (or nothing, for one agent), logging every tensor sent."""

    def __init__(self, group, rank: int, world_size: int, timeout: float) -> None:
        self.group, self.rank, self.world_size, self.timeout = group, rank, world_size, timeout
        self.log: list[tuple] = []
        self.round = -1

    def all_gather(self, tensor: torch.Tensor, name: str) -> torch.Tensor:  # (k,) -> (J, k)
        tensor = tensor.contiguous()
        self.log.append((self.round, name, tuple(tensor.shape), str(tensor.dtype),
                         tensor.numel() * tensor.element_size()))
        if self.world_size == 1:
            return tensor.unsqueeze(0).clone()
        out = [torch.empty_like(tensor) for _ in range(self.world_size)]
        where = "before the first round" if self.round < 0 else f"in round {self.round}"
        with pg.guard(f"'{name}'", timeout=self.timeout, rank=self.rank,
                      world_size=self.world_size, noun="agent", where=where,
                      error=AgentFailureError):
            dist.all_gather(out, tensor, group=self.group)
        return torch.stack(out)

    def bytes(self, rounds=None) -> int:
        return sum(b for r, *_rest, b in self.log if rounds is None or r in rounds)


def _local_status(X: np.ndarray, Y: np.ndarray) -> tuple[list[float], str]:
    problems = []
    if X.ndim != 2:
        problems.append(f"X must be 2-D (n_samples, n_features), got shape {X.shape}")
    if Y.ndim not in (1, 2) or Y.shape[0] != X.shape[0]:
        problems.append(f"y has shape {Y.shape} but X has {X.shape[0]} rows")
    if X.size and not np.isfinite(X).all():
        problems.append("X contains NaN or inf")
    if Y.size and not np.isfinite(Y).all():
        problems.append("y contains NaN or inf")
    if X.shape[0] < 2:
        problems.append(f"at least 2 samples are needed per agent, got {X.shape[0]}")
    code = 0.0 if not problems else 1.0
    n_feat = float(X.shape[1]) if X.ndim == 2 else -1.0
    n_out = float(1 if Y.ndim == 1 else Y.shape[1]) if Y.ndim in (1, 2) else -1.0
    flags = [
        code,
        n_feat,
        n_out,
        float(not np.isfinite(X).all()) if X.size else 0.0,
        float(not np.isfinite(Y).all()) if Y.size else 0.0,
        float(X.shape[0]),
    ]
    return flags, "; ".join(problems)


def _check_status(status: torch.Tensor) -> None:  # (J, 6)
    problems = []
    for j, row in enumerate(status.tolist()):
        if row[3]:
            problems.append(f"agent {j}: X contains NaN or inf")
        if row[4]:
            problems.append(f"agent {j}: y contains NaN or inf")
        if row[0] and not (row[3] or row[4]):
            problems.append(f"agent {j}: invalid local data (n_samples={int(row[5])})")
    feats = [int(r[1]) for r in status.tolist()]
    if len(set(feats)) > 1:
        problems.append(
            "agents disagree on the number of features: "
            + ", ".join(f"agent {j} has {f}" for j, f in enumerate(feats))
        )
    outs = [int(r[2]) for r in status.tolist()]
    if len(set(outs)) > 1:
        problems.append(
            "agents disagree on the number of targets: "
            + ", ".join(f"agent {j} has {t}" for j, t in enumerate(outs))
        )
    if problems:
        raise ValueError(
            "SLIM-KL cannot start: " + "; ".join(problems)
            + ". Every agent needs finite X of the same number of columns and finite y."
        )


def _setup_group(init_method, rank, world_size, timeout):
    """Return (group, rank, world_size, created) for the requested or existing process group."""
    explicit = [init_method is not None, rank is not None, world_size is not None]
    if dist.is_available() and dist.is_initialized():
        if any(explicit):
            raise ValueError(
                "torch.distributed is already initialised (e.g. by torchrun): do not pass "
                "init_method, rank or world_size to slimkl.fit."
            )
        group = pg.gloo_group(timeout)
        return group, dist.get_rank(), dist.get_world_size(), False
    if not any(explicit):
        return None, 0, 1, False
    if not all(explicit):
        raise ValueError(
            "Pass init_method, rank and world_size together (or none of them to run as a "
            "single agent, or inside a torchrun job)."
        )
    pg.init_group(init_method, rank, world_size, timeout, noun="agent")
    return dist.group.WORLD, rank, world_size, True


# -- the algorithm -----------------------------------------------------------------------------
def fit(
    X,
    y,
    *,
    kernel: str | WeightedKernelSum = "gsmp",
    n_components: int = 100,
    bandwidths=None,
    noise: float | None = None,
    noise_lower_bound: float = 1e-4,
    normalize_y: bool = True,
    bits: int = 16,
    rho: float = 1.0,
    max_rounds: int = 200,
    local_iter: int = 3,
    tol: float = 1e-4,
    timeout: float = 60.0,
    random_state: int = 0,
    init_method: str | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    callback: Callable[[int, dict], None] | None = None,
    verbose: bool = False,
) -> SlimKLResult:
    r"""Learn sparse linear multiple kernel weights by quantised consensus ADMM (SLIM-KL).

    Call it in every agent's process with that agent's data; see the module docstring for the
    algorithm and for what is communicated.

    Parameters
    ----------
    X : array-like of shape (n_local, n_features)
        This agent's inputs (never sent).
    y : array-like of shape (n_local,) or (n_local, n_targets)
        This agent's targets (never sent).
    kernel : "gsmp" or WeightedKernelSum, default="gsmp"
        ``"gsmp"`` places one common GSMP grid (:func:`gpkern.kernels.gsmp.gsmp_grid`) from the
        agents' pooled input ranges and spacings; a kernel instance must be the same on every
        agent.
    n_components : int, default=100
        GSMP grid size per bandwidth.
    bandwidths : float or sequence of float, optional
        Relative GSMP bandwidths; default ``(0.001, 0.05)`` as in
        :class:`~gpkern.estimators.MultipleKernelRegressor`.
    noise : float, optional
        Fixed noise variance (normalised units); ``None`` learns it.
    noise_lower_bound : float, default=1e-4
        Lower bound on the learned noise.
    normalize_y : bool, default=True
        Standardise targets with the global mean and standard deviation (from summed
        statistics; no data are sent).
    bits : int, default=16
        Bits per entry of the quantised messages (1 to 31).
    rho : float, default=1.0
        Initial ADMM penalty (adapted by residual balancing).
    max_rounds : int, default=200
        Maximum ADMM rounds.
    local_iter : int, default=3
        SCA iterations of each agent's local step.
    tol : float, default=1e-4
        Relative tolerance on the primal and dual residuals.
    timeout : float, default=60.0
        Seconds any collective may wait for the other agents before
        :class:`AgentFailureError` is raised (also the rendezvous timeout).
    random_state : int, default=0
        Seeds the GSMP grid (same on every agent) and this agent's rounding noise.
    init_method, rank, world_size : optional
        Initialise ``torch.distributed`` (gloo) here, e.g. ``"tcp://127.0.0.1:29500"``. Leave
        all three out inside an initialised job (``torchrun``) or to run a single agent.
    callback : callable, optional
        ``callback(round, info)`` after every round, ``info`` holding ``weights``, ``rho`` and
        the residuals.
    verbose : bool, default=False
        Progress bar over rounds (rank 0 only).

    Returns
    -------
    SlimKLResult

    Raises
    ------
    ValueError
        Bad options, or bad data on any agent (every agent raises, naming the culprits).
    RendezvousError
        The rendezvous could not be reached within ``timeout``.
    AgentFailureError
        Another agent died or hung.

    Warns
    -----
    sklearn.exceptions.ConvergenceWarning
        On rank 0, when ADMM stops at ``max_rounds`` before its residual tolerance, or a learned
        noise ends at ``noise_lower_bound``.

    Examples
    --------
    >>> import numpy as np
    >>> from gpkern.distributed import slimkl
    >>> X = np.arange(60.0)[:, None]
    >>> y = np.cos(2 * np.pi * X[:, 0] / 10)
    >>> res = slimkl.fit(X, y, n_components=16, max_rounds=20)  # one agent, no networking
    >>> res.world_size, res.weights.shape
    (1, (32,))
    """
    t0 = time.perf_counter()
    if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= 31:
        raise ValueError(f"bits must be an integer between 1 and 31, got {bits!r}.")
    for name, value in (("rho", rho), ("timeout", timeout), ("noise_lower_bound", noise_lower_bound)):
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"{name} must be a positive number, got {value!r}.")
    if noise is not None and (not isinstance(noise, (int, float)) or not noise > 0 or not math.isfinite(noise)):
        raise ValueError(f"noise must be a positive float or None, got {noise!r}.")
    for name, value in (("max_rounds", max_rounds), ("local_iter", local_iter), ("n_components", n_components)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
    if not (kernel == "gsmp" or isinstance(kernel, WeightedKernelSum)):
        raise ValueError(f"kernel must be 'gsmp' or a WeightedKernelSum, got {kernel!r}.")
    try:
        Xn = np.asarray(X, dtype=np.float64)
        Yn = np.asarray(y, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"X and y must be numeric arrays: {err}") from err

    group, rank, world_size, created = _setup_group(init_method, rank, world_size, timeout)
    chan = _Channel(group, rank, world_size, timeout)
    try:
        return _run(
            chan, Xn, Yn, kernel, n_components, bandwidths, noise, noise_lower_bound, normalize_y,
            bits, rho, max_rounds, local_iter, tol, random_state, callback, verbose, t0,
        )
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()


def _run(chan, Xn, Yn, kernel, n_components, bandwidths, noise, noise_lower_bound, normalize_y,
         bits, rho, max_rounds, local_iter, tol, random_state, callback, verbose, t0):
    rank, J = chan.rank, chan.world_size
    # Setup 1: every agent learns whether all agents' data are usable, before any maths.
    flags, _ = _local_status(Xn, Yn)
    status = chan.all_gather(torch.tensor(flags, dtype=torch.float64), "status")
    _check_status(status)
    Y = Yn[:, None] if Yn.ndim == 1 else Yn
    n, P = Xn.shape
    t_out = Y.shape[1]

    # Setup 2: a common target normalisation from summed statistics.
    stats = np.concatenate([[n], Y.sum(0), (Y**2).sum(0)])
    tot = chan.all_gather(torch.tensor(stats, dtype=torch.float64), "target_sums").sum(0).numpy()
    if normalize_y:
        N = tot[0]
        mean = tot[1 : 1 + t_out] / N
        std = np.sqrt(np.maximum(tot[1 + t_out :] / N - mean**2, 0.0))
        std = np.where(std > 0, std, 1.0)
    else:
        mean, std = np.zeros(t_out), np.ones(t_out)
    Yt = torch.tensor((Y - mean) / std, dtype=torch.float64)
    Xt = torch.tensor(Xn, dtype=torch.float64)

    # Setup 3: one GSMP grid for everybody, from pooled per-dimension ranges and spacings.
    if isinstance(kernel, str):
        lo, hi, gap = [], [], []
        for p in range(P):
            u = np.unique(Xn[:, p])
            lo.append(u.min())
            hi.append(u.max())
            gap.append(np.median(np.diff(u)) if u.size > 1 else np.inf)
        g = chan.all_gather(torch.tensor(lo + hi + gap, dtype=torch.float64), "input_ranges")
        glo, ghi, ggap = g[:, :P].min(0).values, g[:, P : 2 * P].max(0).values, g[:, 2 * P :].min(0).values
        ggap = torch.where(torch.isfinite(ggap) & (ggap > 0), ggap, torch.ones_like(ggap))
        # Two synthetic points per dimension reproduce the pooled range and spacing exactly.
        proxy = torch.stack([glo, glo + ggap, ghi]).to(torch.float64)
        gen = torch.Generator().manual_seed(int(random_state))
        bw = (0.001, 0.05) if bandwidths is None else bandwidths
        kern = GSMPKernel.from_data(proxy, n_components, bw, generator=gen, n_samples=int(tot[0]))
    else:
        import copy

        kern = copy.deepcopy(kernel).to(torch.float64)
    with torch.no_grad():
        B = kern.basis(Xt, Xt)
    blocks = _Blocks([B], [Yt])
    A = kern.n_basis
    learn_noise = noise is None
    noise0 = max(0.1, noise_lower_bound) if learn_noise else float(noise)
    lower = torch.zeros(A + 1, dtype=torch.float64)
    lower[A] = min(noise_lower_bound, noise0)
    x = torch.cat([torch.full((A,), 0.9 / A, dtype=torch.float64), torch.tensor([noise0])])
    z = x.clone()
    u = torch.zeros(A + 1, dtype=torch.float64)
    m_hat = torch.zeros(J, A + 1, dtype=torch.float64)  # every agent's last message, as all decoded it
    setup_bytes = chan.bytes()
    gen_q = torch.Generator().manual_seed(int(random_state) * 7919 + rank)
    pri, dua, rhos = [], [], []
    last_r2 = 0.0
    step_q = 0.0
    converged = False
    from tqdm.auto import tqdm

    bar = tqdm(total=max_rounds, desc="SLIM-KL", disable=not verbose or rank != 0, leave=False)
    k = 0
    try:
        for k in range(max_rounds):
            chan.round = k
            res = sca_fit(
                blocks.bases, blocks.targets, weights=x[:A], noise=float(x[A]),
                learn_noise=learn_noise, noise_lower_bound=float(lower[A]),
                # Round 0 starts every agent from its own local optimum (no consensus yet).
                max_iter=local_iter if k > 0 else max(local_iter, 50), tol=0.0 if k > 0 else 1e-6,
                rho=rho if k > 0 else 0.0, center=z - u,
            )
            x = torch.cat([res.weights, torch.tensor([res.noise])])
            m = x + u
            codes, qlo, qhi = quantize(m - m_hat[rank], bits, gen_q)
            # gloo has no int16: 9-15-bit codes travel as their raw bytes.
            wire = codes.view(torch.uint8) if codes.dtype == torch.int16 else codes
            codes_all = chan.all_gather(wire, "theta_codes").view(codes.dtype)
            heads = chan.all_gather(torch.tensor([qlo, qhi, last_r2], dtype=torch.float64), "theta_range")
            m_hat = m_hat + torch.stack(
                [dequantize(codes_all[j], float(heads[j, 0]), float(heads[j, 1]), bits) for j in range(J)]
            )
            step_q = max(float((heads[j, 1] - heads[j, 0]) / (2**bits - 1)) for j in range(J))
            z_old = z
            z = torch.maximum(m_hat.mean(0), lower)
            if not learn_noise:
                z[A] = noise0
            u = u + x - z
            last_r2 = float(((x - z) ** 2).sum())
            r = math.sqrt(float(heads[:, 2].sum())) if k > 0 else math.inf
            s = rho * math.sqrt(J) * float((z - z_old).norm())
            pri.append(r)
            dua.append(s)
            rhos.append(rho)
            bar.update(1)
            if callback is not None:
                callback(k, {"weights": z[:A].clone(), "rho": rho, "primal": r, "dual": s})
            scale = max(1.0, float(z.norm()) * math.sqrt(J))
            if k > 0 and r <= tol * scale and s <= tol * scale:
                converged = True
                break
            # Residual balancing (mu = 3: with 10, rho froze while r stayed ~5 s and ADMM crawled);
            # every agent sees the same r and s, so rho stays consistent.
            if k > 0 and r > 3 * s:
                rho, u = rho * 2.0, u / 2.0
            elif k > 0 and s > 3 * r:
                rho, u = rho / 2.0, u * 2.0
    finally:
        bar.close()
    chan.round = k + 1
    with torch.no_grad():
        kern.weights = z[:A]
    local_f = blocks.objective(z)
    total_f = float(chan.all_gather(torch.tensor([local_f], dtype=torch.float64), "objective").sum())
    per_round = chan.bytes(rounds={0}) if k >= 0 else 0
    if rank == 0:  # one warning for the run, not one per agent
        floor = float(lower[A])
        at_floor = learn_noise and float(z[A]) - floor <= BOUND_RTOL * floor
        hits = [BoundHit("noise", None, float(z[A]), floor, "lower")] if at_floor else []
        warn_if_unconverged(
            OptimizeResult(total_f, k + 1, converged), "SLIM-KL", max_rounds,
            optimizer="ADMM", budget="max_rounds",
        )
        warn_at_bounds(hits, "SLIM-KL", {"noise": NOISE_FLOOR_HINT})
    return SlimKLResult(
        weights=z[:A].numpy().copy(), noise=float(z[A]), kernel=kern, objective=total_f,
        n_rounds=k + 1, converged=converged, bytes_per_round=per_round, bytes_setup=setup_bytes,
        bytes_sent=chan.bytes(), quantization_step=step_q, primal_residuals=pri,
        dual_residuals=dua, rhos=rhos, messages=list(chan.log),
        wall_time=time.perf_counter() - t0, rank=rank, world_size=J, y_mean=mean, y_std=std,
    )


# -- local launcher and command line ------------------------------------------------------------
def _load(path: str) -> tuple[np.ndarray, np.ndarray]:
    if path.endswith(".npz"):
        with np.load(path) as d:
            return np.asarray(d["X"], dtype=np.float64), np.asarray(d["y"], dtype=np.float64)
    data = np.loadtxt(path, delimiter=",", ndmin=2, dtype=np.float64)
    return data[:, :-1], data[:, -1]


def _summary(res: SlimKLResult) -> dict:
    keys = ("weights", "noise", "objective", "n_rounds", "converged", "bytes_per_round",
            "bytes_setup", "bytes_sent", "quantization_step", "wall_time", "rank", "world_size",
            "y_mean", "y_std")
    out = {k: getattr(res, k) for k in keys}
    out["means"] = res.kernel.means.numpy() if isinstance(res.kernel, GSMPKernel) else None
    return out


def _cli_worker(rank, world_size, init_method, path, options):
    X, y = _load(path)
    idx = np.array_split(np.arange(X.shape[0]), world_size)[rank]
    kw = {} if init_method is None else {"init_method": init_method, "rank": rank, "world_size": world_size}
    return _summary(fit(X[idx], y[idx], **kw, **options))


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m gpkern.distributed.slimkl --nproc 4 --data FILE --out FILE``.

    ``--data`` is an ``.npz`` with arrays ``X`` and ``y`` or a CSV whose last column is ``y``;
    rank ``r`` of ``J`` takes the ``r``-th of ``J`` contiguous chunks of rows. Under
    ``torchrun`` (``RANK``/``WORLD_SIZE`` set) the process joins that job instead of spawning.
    """
    ap = argparse.ArgumentParser(prog="python -m gpkern.distributed.slimkl", description=main.__doc__)
    ap.add_argument("--data", required=True, help=".npz with X, y or CSV with y last")
    ap.add_argument("--out", default=None, help="write the consensus (weights, noise, ...) to this .npz")
    ap.add_argument("--nproc", type=int, default=None, help="local agents to spawn (default 1)")
    ap.add_argument("--n-components", type=int, default=100)
    ap.add_argument("--bits", type=int, default=16)
    ap.add_argument("--rho", type=float, default=1.0)
    ap.add_argument("--max-rounds", type=int, default=200)
    ap.add_argument("--local-iter", type=int, default=3)
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--noise", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ns = ap.parse_args(argv)
    options = dict(
        n_components=ns.n_components, bits=ns.bits, rho=ns.rho, max_rounds=ns.max_rounds,
        local_iter=ns.local_iter, tol=ns.tol, timeout=ns.timeout, noise=ns.noise,
        random_state=ns.seed,
    )
    if pg.torchrun_env_present():
        if ns.nproc is not None:
            raise SystemExit("--nproc cannot be used under torchrun (it sets the world size).")
        info = pg.init_from_env(ns.timeout, backend="gloo")
        try:
            r = info.rank
            out = _cli_worker(r, info.world_size, None, ns.data, options)
        finally:
            pg.destroy(info)
        outs = [("ok", out)] if r == 0 else []
    else:
        nproc = 1 if ns.nproc is None else ns.nproc
        outs = launch(_cli_worker, nproc, (ns.data, options), deadline=10 * ns.timeout + 600)
        failed = [(r, o) for r, o in enumerate(outs) if o[0] != "ok"]
        if failed:
            for r, (status, value) in failed:
                print(f"agent {r}: {status}: {value}", file=sys.stderr)
            return 1
    if outs:
        res0 = outs[0][1]
        print(
            f"SLIM-KL: {int((res0['weights'] > 0).sum())}/{res0['weights'].size} non-zero weights, "
            f"noise {res0['noise']:.4g}, objective {res0['objective']:.6g}, {res0['n_rounds']} rounds, "
            f"{res0['bytes_per_round']} bytes/agent/round, {res0['bytes_sent']} bytes sent, "
            f"{res0['wall_time']:.2f} s"
        )
        if ns.out:
            np.savez(ns.out, **{k: np.asarray(v) for k, v in res0.items() if v is not None})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
