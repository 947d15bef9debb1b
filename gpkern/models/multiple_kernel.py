r"""Sparse learning of linear multiple kernel weights by successive convex approximation (SCA).

For a linear multiple kernel (:mod:`gpkern.kernels.multiple`) the covariance of the targets is
affine in the weights,

.. math::

    C(\theta, s) = \sum_{a=1}^{A} \theta_a K_a + s I, \qquad \theta \ge 0, \; s \ge s_{\min},

and the negative log marginal likelihood is, up to constants, :math:`\tfrac12 F` with

.. math::

    F(\theta, s) = \operatorname{tr}\!\big(Y^\top C^{-1} Y\big) + t \log|C|

for :math:`t` target columns. The data-fit term is convex in :math:`(\theta, s)` (a matrix
fractional function of an affine argument) and :math:`\log|C|` is concave. Successive convex
approximation (SCA) keeps the convex term and replaces the concave one by its tangent plane at
the current iterate :math:`x^k = (\theta^k, s^k)`,

.. math::

    \log|C(x)| \le \log|C(x^k)| + g^\top (x - x^k), \qquad
    g_a = \operatorname{tr}\!\big(C(x^k)^{-1} K_a\big), \quad g_s = \operatorname{tr}\!\big(C(x^k)^{-1}\big),

an upper bound that is tight at :math:`x^k` (concavity). Each SCA step minimises the convex
surrogate

.. math::

    h_k(x) = \operatorname{tr}\!\big(Y^\top C(x)^{-1} Y\big) + t\, g^\top x
        \;\big[ + \tfrac{\rho}{2} \|x - v\|^2 \big] \qquad \text{s.t. } x \ge \ell,

so the method is a majorise-minimise scheme: :math:`F(x^{k+1}) \le h_k(x^{k+1}) + c_k \le
h_k(x^k) + c_k = F(x^k)` and the objective never increases. The linear term :math:`t g^\top x`
is a weighted :math:`\ell_1` penalty on the non-negative weights, which is why many weights
become exactly zero.

The convex sub-problem solver
-----------------------------
The sub-problem is a smooth convex problem with simple bounds. We solve it with Bertsekas'
projected Newton method (Bertsekas, *SIAM J. Control Optim.* 20(2), 1982) using the exact
gradient and Hessian

.. math::

    \partial_a h = -\operatorname{tr}\!\big(\alpha^\top K_a \alpha\big) + t g_a, \qquad
    \partial_a \partial_b h = 2 \operatorname{tr}\!\big((K_a\alpha)^\top C^{-1} (K_b\alpha)\big),
    \qquad \alpha = C^{-1} Y,

(:math:`K_s = I` for the noise). Variables at their bound with a positive gradient
(:math:`\varepsilon`-active set) take a scaled gradient step, the others a Newton step on the
free block (Cholesky with escalating ridge), the step is projected onto the bounds (which is
what produces *exact* zeros) and an Armijo backtracking line search accepts it. When the
Newton direction fails the line search the solver falls back to a projected gradient step,
which always decreases :math:`h` away from a stationary point; a step that does not decrease
:math:`h` is never taken. Everything is dense linear algebra in torch (no external or
commercial solver). The SOCP reformulation of the reference implementation
(:math:`y^\top C^{-1} y = \min \sum_a \|w_a\|^2/\theta_a` s.t. :math:`\sum_a L_a w_a = y`,
solved with MOSEK there) has the same minimiser.

Data may come in blocks (independent groups of observations): the objective is then the sum of
the blocks' objectives, the form that :mod:`gpkern.distributed.slimkl` distributes over agents.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

__all__ = ["NOISE_FLOOR_HINT", "SCAResult", "lmk_objective", "sca_fit", "surrogate_minimize"]

#: Advice when a learned noise ends at ``noise_lower_bound`` (ends a ConvergenceWarning).
NOISE_FLOOR_HINT = (
    "The noise is at noise_lower_bound: the kernel interpolates the (normalised) targets, which "
    "on small or noisy data overfits. Raise noise_lower_bound, use fewer components, or pass "
    "the noise you know as noise=..."
)


@dataclass
class SCAResult:
    """Outcome of :func:`sca_fit`.

    Attributes
    ----------
    weights : torch.Tensor of shape (A,)
        Learned kernel weights :math:`\\theta` (many exactly zero).
    noise : float
        Learned (or fixed) noise variance :math:`s`.
    objective : float
        Final :math:`F(\\theta, s)`.
    history : list of float
        :math:`F` at the start and after every SCA iteration (non-increasing).
    n_iter : int
        SCA iterations run.
    converged : bool
        Whether the relative decrease fell below ``tol`` before ``max_iter``.
    """

    weights: torch.Tensor
    noise: float
    objective: float
    history: list[float] = field(default_factory=list)
    n_iter: int = 0
    converged: bool = False


class _Blocks:
    """Basis matrices and targets of independent data blocks; evaluates F and its pieces."""

    def __init__(self, bases: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> None:
        # Contiguous copies: every evaluation reshapes the stack to (A, n * n) for a GEMV.
        self.bases = [B.contiguous() for B in bases]  # each (A, n_b, n_b)
        self.targets = [Y if Y.ndim == 2 else Y[:, None] for Y in targets]  # each (n_b, t)
        self.A = self.bases[0].shape[0]
        self._cached: tuple[torch.Tensor, list] | None = None

    def _chol(self, x: torch.Tensor, b: int) -> torch.Tensor | None:
        # The solver asks for the same x several times in a row (line search, then gradient,
        # then tangent): one factorisation per distinct point.
        if self._cached is None or not torch.equal(self._cached[0], x):
            self._cached = (x.clone(), [False] * len(self.bases))
        factors = self._cached[1]
        if factors[b] is False:
            factors[b] = self._factor(x, b)
        return factors[b]

    def _factor(self, x: torch.Tensor, b: int) -> torch.Tensor | None:
        # Only the support enters C: after the first iterations most weights are exact zeros,
        # which makes every evaluation far cheaper than a pass over all A basis matrices.
        K = self.bases[b]
        support = torch.nonzero(x[: self.A]).flatten()
        n = K.shape[-1]
        if 4 * support.numel() >= self.A:  # gathering most of the stack costs more than a GEMV
            C = (x[: self.A] @ K.reshape(self.A, -1)).reshape(n, n)
        else:
            C = (x[support] @ K.reshape(self.A, -1).index_select(0, support)).reshape(n, n)
        C.diagonal().add_(x[self.A])
        L, info = torch.linalg.cholesky_ex(C)
        return None if bool(info) else L

    def objective(self, x: torch.Tensor) -> float:
        total = 0.0
        for b, Y in enumerate(self.targets):
            L = self._chol(x, b)
            if L is None:
                return math.inf
            alpha = torch.cholesky_solve(Y, L)
            total += float((Y * alpha).sum()) + Y.shape[1] * float(2 * L.diagonal().log().sum())
        return total

    def objective_datafit(self, x: torch.Tensor) -> float:
        total = 0.0
        for b, Y in enumerate(self.targets):
            L = self._chol(x, b)
            if L is None:
                return math.inf
            total += float((Y * torch.cholesky_solve(Y, L)).sum())
        return total

    def tangent(self, x: torch.Tensor) -> torch.Tensor:  # (A + 1,)
        r""":math:`\sum_b t_b \operatorname{tr}(C_b^{-1} K_{b,a})`, noise last."""
        g = torch.zeros(self.A + 1, dtype=x.dtype, device=x.device)
        for b, Y in enumerate(self.targets):
            L = self._chol(x, b)
            if L is None:
                raise FloatingPointError("C(x) is not positive definite at an SCA iterate.")
            Cinv = torch.cholesky_inverse(L)
            g[: self.A] += Y.shape[1] * (self.bases[b].reshape(self.A, -1) @ Cinv.reshape(-1))
            g[self.A] += Y.shape[1] * Cinv.diagonal().sum()
        return g

    def datafit(self, x: torch.Tensor, hessian: bool = False):
        r"""tr(YᵀC⁻¹Y), its gradient and (``hessian=True``) its Hessian; None if C is not PD."""
        value, grad = 0.0, torch.zeros(self.A + 1, dtype=x.dtype, device=x.device)
        H = torch.zeros(self.A + 1, self.A + 1, dtype=x.dtype, device=x.device) if hessian else None
        for b, Y in enumerate(self.targets):
            L = self._chol(x, b)
            if L is None:
                return None
            alpha = torch.cholesky_solve(Y, L)  # (n, t)
            value += float((Y * alpha).sum())
            n, t = alpha.shape
            KA = (self.bases[b].reshape(-1, n) @ alpha).reshape(self.A, n, t)  # K_a alpha
            V = torch.cat([KA, alpha.unsqueeze(0)], dim=0)  # (A + 1, n, t); noise basis is I
            grad -= (V * alpha.unsqueeze(0)).sum((1, 2))
            if hessian:
                flat = V.permute(1, 0, 2).reshape(n, -1)  # (n, (A+1) t)
                W = torch.cholesky_solve(flat, L).reshape(n, self.A + 1, t).permute(1, 0, 2)
                H += 2.0 * V.reshape(self.A + 1, -1) @ W.reshape(self.A + 1, -1).T
        return value, grad, H


def lmk_objective(
    bases: Sequence[torch.Tensor],  # each (A, n_b, n_b)
    targets: Sequence[torch.Tensor],  # each (n_b, t)
    weights: torch.Tensor,  # (A,)
    noise: float,
) -> float:
    r"""The SCA objective :math:`F = \sum_b \operatorname{tr}(Y_b^\top C_b^{-1} Y_b) + t_b \log|C_b|`.

    Returns ``inf`` when some :math:`C_b` is not numerically positive definite.
    """
    x = torch.cat([weights, weights.new_tensor([float(noise)])])
    return _Blocks(bases, targets).objective(x)


def surrogate_minimize(
    blocks: _Blocks,
    x: torch.Tensor,  # (A + 1,)
    linear: torch.Tensor,  # (A + 1,)
    lower: torch.Tensor,  # (A + 1,)
    *,
    fixed: torch.Tensor | None = None,  # (A + 1,) bool: variables held at their value
    rho: float = 0.0,
    center: torch.Tensor | None = None,  # (A + 1,)
    max_iter: int = 50,
    tol: float = 1e-9,
) -> torch.Tensor:
    r"""Projected Newton on :math:`h(x) = \operatorname{tr}(Y^\top C(x)^{-1}Y) + \ell^\top x + \tfrac{\rho}{2}\|x - v\|^2`, :math:`x \ge` ``lower``.

    Never returns a point with a larger :math:`h` than the starting ``x`` (which must be
    feasible with :math:`C(x)` positive definite).
    """
    free_mask = torch.ones_like(x, dtype=torch.bool) if fixed is None else ~fixed
    center = x.clone() if center is None else center

    def value_grad(z: torch.Tensor):
        out = blocks.datafit(z, hessian=True)
        if out is None:
            return math.inf, None, None
        v, g, H = out
        v += float(linear @ z) + 0.5 * rho * float(((z - center) ** 2).sum())
        g = g + linear + rho * (z - center)
        if rho > 0:
            H.diagonal().add_(rho)
        return v, g, H

    def value(z: torch.Tensor) -> float:
        f = blocks.objective_datafit(z)
        return f + float(linear @ z) + 0.5 * rho * float(((z - center) ** 2).sum())

    def project(z: torch.Tensor) -> torch.Tensor:
        z = torch.maximum(z, lower)
        return torch.where(free_mask, z, x0)

    x0 = x.clone()
    newton_step = 1.0
    f, g, H = value_grad(x)
    if not math.isfinite(f):
        raise FloatingPointError("The SCA sub-problem starts at a point where C is not positive definite.")
    for _ in range(max_iter):
        g = torch.where(free_mask, g, torch.zeros_like(g))
        pg = x - project(x - g)
        pg_norm = float(pg.abs().max())
        if pg_norm <= tol * (1.0 + abs(f)):
            break
        eps = min(1e-6, pg_norm)
        active = ((x - lower <= eps) & (g > 0)) | ~free_mask
        free = ~active
        d = torch.zeros_like(x)
        hdiag = H.diagonal().clamp_min(1e-300)
        d[active] = -g[active] / hdiag[active]
        if bool(free.any()):
            HF = H[free][:, free]
            ridge = 0.0
            scale = float(HF.diagonal().abs().mean()) or 1.0
            eye = torch.eye(HF.shape[0], dtype=HF.dtype, device=HF.device)
            for _attempt in range(8):
                Lh, info = torch.linalg.cholesky_ex(HF + ridge * eye)
                if not bool(info):
                    break
                ridge = scale * 1e-12 if ridge == 0.0 else ridge * 100
            d[free] = -torch.cholesky_solve(g[free, None], Lh)[:, 0]
        if -float(g @ d) <= tol * (1.0 + abs(f)):
            break  # the Newton model predicts no worthwhile decrease: converged
        accepted = False
        for direction in (d, -g / float(hdiag.max())):
            # Far from the solution the Newton step overshoots (the data term scales like 1/x
            # along rays) and backtracks by similar factors at every iteration: start near the
            # last accepted step instead of at 1.
            step = newton_step if direction is d else 1.0
            for _ls in range(30):
                x_new = project(x + step * direction)
                decrease = float(g @ (x_new - x))
                if decrease < 0:
                    f_new = value(x_new)
                    if f_new <= f + 1e-4 * decrease and f_new < f:
                        accepted = True
                        break
                step *= 0.5
            if accepted:
                break
        if not accepted:
            break  # stationary to numerical precision: no step decreases h
        if direction is d:
            newton_step = min(1.0, 4.0 * step)
        rel = (f - f_new) / max(1.0, abs(f))
        x = x_new
        if rel <= tol:
            break
        f, g, H = value_grad(x)
    return x


def sca_fit(
    bases: Sequence[torch.Tensor],  # each (A, n_b, n_b)
    targets: Sequence[torch.Tensor],  # each (n_b, t)
    *,
    weights: torch.Tensor | None = None,  # (A,)
    noise: float = 0.1,
    learn_noise: bool = True,
    noise_lower_bound: float = 1e-6,
    max_iter: int = 100,
    tol: float = 1e-6,
    inner_max_iter: int = 50,
    rho: float = 0.0,
    center: torch.Tensor | None = None,  # (A + 1,)
    verbose: bool = False,
    desc: str = "SCA",
) -> SCAResult:
    r"""Learn the weights of a linear multiple kernel by successive convex approximation.

    Minimises :math:`F(\theta, s) = \sum_b \operatorname{tr}(Y_b^\top C_b^{-1} Y_b) + t_b
    \log|C_b|` (plus :math:`\tfrac{\rho}{2}\|(\theta, s) - v\|^2` when ``rho > 0``, the
    proximal term of an ADMM local step) over :math:`\theta \ge 0` and
    :math:`s \ge` ``noise_lower_bound``; see the module docstring for the method.

    Parameters
    ----------
    bases : sequence of torch.Tensor of shape (A, n_b, n_b)
        Unit-weight basis kernel matrices of each data block (e.g.
        ``GSMPKernel.basis(X, X)``).
    targets : sequence of torch.Tensor of shape (n_b, t) or (n_b,)
        Targets of each block.
    weights : torch.Tensor of shape (A,), optional
        Starting weights (default :math:`0.9 \bar{v} / A` with :math:`\bar v` the mean target
        variance); zeros stay zero.
    noise : float, default=0.1
        Starting (or fixed) noise variance.
    learn_noise : bool, default=True
        Whether :math:`s` is learned.
    noise_lower_bound : float, default=1e-6
        Lower bound on :math:`s`; keeps :math:`C` positive definite.
    max_iter : int, default=100
        SCA iterations.
    tol : float, default=1e-6
        Stop when the relative decrease of :math:`F` in one iteration is below ``tol``.
    inner_max_iter : int, default=50
        Projected Newton iterations per sub-problem.
    rho : float, default=0.0
        Weight of the proximal term.
    center : torch.Tensor of shape (A + 1,), optional
        Centre :math:`v` of the proximal term (weights then noise).
    verbose : bool, default=False
        Show a progress bar.
    desc : str, default="SCA"
        Label of the progress bar.

    Returns
    -------
    SCAResult

    Examples
    --------
    >>> import torch
    >>> from gpkern.kernels import GSMPKernel
    >>> from gpkern.models.multiple_kernel import sca_fit
    >>> X = torch.arange(60.0, dtype=torch.float64)[:, None]
    >>> y = torch.cos(2 * torch.pi * 0.1 * X[:, 0])
    >>> k = GSMPKernel(means=torch.linspace(0, 0.5, 26), bandwidths=0.001).double()
    >>> res = sca_fit([k.basis(X, X)], [y[:, None]], max_iter=20)
    >>> int(res.weights.argmax()), bool(res.history[-1] <= res.history[0])
    (5, True)
    """
    blocks = _Blocks(bases, targets)
    A = blocks.A
    dtype, device = blocks.bases[0].dtype, blocks.bases[0].device
    if weights is None:
        var = sum(float((Y**2).mean()) for Y in blocks.targets) / len(blocks.targets)
        weights = torch.full((A,), 0.9 * max(var, 1e-12) / A, dtype=dtype, device=device)
    if not noise > 0 or not math.isfinite(noise):
        raise ValueError(f"noise must be a positive float, got {noise!r}.")
    lower = torch.zeros(A + 1, dtype=dtype, device=device)
    lower[A] = noise_lower_bound
    x = torch.cat([weights.to(dtype=dtype, device=device), weights.new_tensor([max(noise, noise_lower_bound)])])
    fixed = torch.zeros(A + 1, dtype=torch.bool, device=device)
    fixed[A] = not learn_noise
    prox = 0.0 if rho <= 0 or center is None else 0.5 * rho

    def total(z: torch.Tensor) -> float:
        f = blocks.objective(z)
        return f + (prox * float(((z - center) ** 2).sum()) if prox else 0.0)

    f = total(x)
    if not math.isfinite(f):
        raise FloatingPointError(
            "The starting covariance is not positive definite; increase the noise."
        )
    history = [f]
    converged = False
    bar = tqdm(total=max_iter, desc=desc, disable=not verbose, leave=False)
    it = 0
    try:
        for it in range(1, max_iter + 1):  # noqa: B007 (it is reported after the loop)
            g = blocks.tangent(x)
            x_new = surrogate_minimize(
                blocks, x, g, lower, fixed=fixed, rho=rho if prox else 0.0, center=center,
                max_iter=inner_max_iter, tol=min(1e-9, 1e-2 * tol),
            )
            f_new = total(x_new)
            bar.update(1)
            bar.set_postfix(objective=f"{f_new:.6g}")
            # The surrogate majorises F, so f_new <= f up to rounding; keep x when it is not.
            if not f_new <= f:
                history.append(f)
                converged = True
                break
            decrease = (f - f_new) / max(1.0, abs(f))
            x, f = x_new, f_new
            history.append(f)
            if decrease <= tol:
                converged = True
                break
    finally:
        bar.close()
    return SCAResult(
        weights=x[:A].clone(), noise=float(x[A]), objective=float(blocks.objective(x)),
        history=history, n_iter=it, converged=converged,
    )
