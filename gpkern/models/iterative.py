r"""Exact GP regression by iterative linear algebra on a lazy kernel operator.

The kernel matrix is a :class:`gpkern.linalg.keops.operator.KernelOperator` (KeOps reductions, or
row-blocked torch), never stored.  Training maximises the log marginal likelihood estimated on
:math:`A = K + \sigma^2 I` with the library's one CG and Lanczos (:mod:`gpkern.linalg.cg`):

* :math:`y^\top A^{-1} y` by preconditioned conjugate gradients (:func:`~gpkern.linalg.cg.pcg`),
  and
* :math:`\log|A|` by stochastic Lanczos quadrature on the CG tridiagonals of ``num_probes``
  probe vectors :math:`z \sim \mathcal N(0, P)` solved in the same batch
  (:func:`~gpkern.linalg.cg.slq_logdet`), with the Hutchinson gradient of
  :meth:`~gpkern.linalg.cg.StochasticLogdet.with_gradient`,

both preconditioned by :math:`P = L L^\top + \sigma^2 I`, :math:`L` a randomly pivoted Cholesky
factor of rank ``preconditioner_rank`` (Gardner et al., 2018).  The gradients are those of
solve-free surrogates: one differentiable product :math:`A(\theta)[\alpha, P^{-1}Z]` gives

.. math::

    \partial\, y^\top A^{-1} y = -\alpha^\top \partial A\, \alpha, \qquad
    \partial \log|A| \approx \tfrac1c \textstyle\sum_j (A^{-1} z_j)^\top \partial A\, P^{-1} z_j.

The pivots and the probes are drawn from ``seed`` at every evaluation, so the loss is a
deterministic function of the hyperparameters (L-BFGS line searches stay valid).

Prediction conditions once with preconditioned CG (:func:`gpkern.linalg.cg.pcg`),
:math:`\alpha = A^{-1} Y`, and predicts means :math:`K_{*X}\alpha` and variances in batches
of test points without forming any :math:`n \times n` or :math:`n \times m` matrix.  The
conditioning solve is preconditioned by :math:`P = F F^\top + \sigma^2 I` with :math:`F` a
randomly pivoted Cholesky factor of rank ``eval_preconditioner_rank``
(:func:`gpkern.linalg.rpcholesky.rp_cholesky`: blocks of pivots, matrix-multiply speed), so a
high rank, and few CG iterations, is affordable at large :math:`n`.  Variances use the
Galerkin approximation of :math:`A^{-1}` on the subspace :math:`S = [F_v, D]` spanned by the
first ``variance_rank`` columns of :math:`F` and the CG search directions of the mean solve,

.. math::

    \sigma_*^2 \approx k_{**} - k_{*X} S (S^\top A S)^{-1} S^\top k_{X*} \;\ge\; \text{exact},

which costs one extra product with ``variance_rank`` columns at conditioning time and
one reduction per test batch; ``exact_variance=True`` solves with every test column instead.

The same code runs with the training rows split across processes
(:class:`gpkern.distributed.model.DistributedGP` overrides the operator, ``_rows``,
``_reduce`` and ``_shared``): every :math:`n`-long array then holds one process's rows, and
every sum over rows goes through ``_reduce``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, fields

import gpytorch
import torch
from tqdm.auto import tqdm

from gpkern.linalg.cg import Reduce, StochasticLogdet, pcg, slq_logdet
from gpkern.linalg.heap import trim_heap
from gpkern.linalg.keops import KeOpsRuntime, KernelOperator, kernel_operator
from gpkern.linalg.rpcholesky import factor_gram, factor_matmul, factor_t_matmul, rp_cholesky
from gpkern.models.exact import ExactGP

__all__ = ["IterativeGP", "IterativePosterior", "IterativeSettings"]


@dataclass
class IterativeSettings:
    r"""Knobs of the iterative GP, all in one place.

    Training (each evaluation of :meth:`IterativeGP.log_marginal_likelihood`) uses ``cg_tol``,
    ``max_cg_iter``, ``num_probes``, ``lanczos_iter``, ``preconditioner_rank`` and ``seed``;
    conditioning and prediction (:class:`IterativePosterior`) use the ``eval_*`` and
    ``variance_*`` knobs, ``batch_size`` and ``seed``.

    Parameters
    ----------
    cg_tol : float, default=0.01
        Relative residual tolerance of the training solve, per column: the targets
        :math:`A^{-1}Y` and the probe solves :math:`A^{-1}Z` (whose CG coefficients are the
        Lanczos tridiagonals) run as one batch.
    max_cg_iter : int, default=500
        Iteration cap of the training solve (a :class:`~gpkern.exceptions.CGConvergenceWarning`
        says when it is reached).
    num_probes : int, default=15
        Probe vectors :math:`z \sim \mathcal N(0, P)` of the stochastic log-determinant and its
        gradient; the estimate's standard deviation falls as ``num_probes ** -0.5``.
    lanczos_iter : int, default=20
        Lanczos steps used by the quadrature: each probe's tridiagonal is cut to its leading
        ``lanczos_iter`` rows and columns (the probe solves themselves run to ``cg_tol``).
    preconditioner_rank : int, default=256
        Rank cap of the randomly pivoted Cholesky factor :math:`L`
        (:func:`gpkern.linalg.rpcholesky.rp_cholesky`) of the training preconditioner
        :math:`P = L L^\top + \sigma^2 I`, recomputed (not differentiated) at every evaluation;
        never above ``n``. A higher rank means fewer CG iterations and a lower-variance
        log-determinant (exact once :math:`P = A`).
    eval_cg_tol : float, default=1e-6
        Relative residual tolerance of the conditioning solve :math:`A^{-1} Y`.
    max_eval_cg_iter : int, default=1000
        CG iteration cap of the conditioning solve.
    variance_rank : int, default=256
        Leading columns of the conditioning preconditioner's factor kept for the variance
        subspace. Variances are accurate when it reaches the kernel matrix's effective rank.
    eval_preconditioner_rank : int, optional
        Rank cap of the randomly pivoted Cholesky factor :math:`F` that preconditions the
        conditioning solve (:func:`gpkern.linalg.rpcholesky.rp_cholesky`; it stops earlier when
        the relative trace error falls below 1e-8). ``None`` uses 1024; never below
        ``variance_rank`` and never above ``n``. Raising
        it cuts CG iterations (each one a reduction over all :math:`n^2` pairs) at a cost of
        :math:`8 n r` bytes and :math:`O(n r^2)` matrix-multiply flops: for a 2-ReLU-layer NNGP
        on 10,000 points CG needs 39 / 9 / 5 iterations at rank 256 / 1024 / 2048 (20,000
        points: 12 / 6 at 1024 / 2048).
    variance_directions : int, default=50
        CG search directions (per output) kept for the variance subspace.
    batch_size : int, default=4096
        Test points per prediction batch.
    seed : int, default=0
        Seed of the preconditioners' pivots and of the probe vectors.
    """

    cg_tol: float = 0.01
    max_cg_iter: int = 500
    num_probes: int = 15
    lanczos_iter: int = 20
    preconditioner_rank: int = 256
    eval_cg_tol: float = 1e-6
    max_eval_cg_iter: int = 1000
    variance_rank: int = 256
    eval_preconditioner_rank: int | None = None
    variance_directions: int = 50
    batch_size: int = 4096
    seed: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.name == "eval_preconditioner_rank":
                continue
            if f.type == "float" or isinstance(value, float):
                if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                    raise ValueError(f"{f.name} must be a positive float, got {value!r}.")
            elif (
                not isinstance(value, int)
                or isinstance(value, bool)
                or value < (0 if f.name == "seed" else 1)
            ):
                raise ValueError(f"{f.name} must be a positive int, got {value!r}.")


_TRAIN_CG_ADVICE = (
    "The marginal likelihood and its gradient are inaccurate: raise max_cg_iter or "
    "preconditioner_rank, or loosen cg_tol (IterativeSettings; GPRegressor's backend_options)."
)
_EVAL_CG_ADVICE = (
    "Raise max_eval_cg_iter or eval_preconditioner_rank, or loosen eval_cg_tol "
    "(IterativeSettings; GPRegressor's backend_options)."
)


class IterativeGP(ExactGP):
    r"""Exact GP regression on a lazy kernel operator (KeOps or chunked torch), trained by CG.

    Same model and interface as :class:`gpkern.models.exact.ExactGP`; the linear algebra is
    iterative (see the module docstring), so memory is linear in :math:`n`.

    Parameters
    ----------
    kernel : gpytorch.kernels.Kernel
        A kernel :func:`gpkern.linalg.keops.registry.kernel_formula` supports.
    noise : float, default=0.1
    learn_noise : bool, default=True
    noise_lower_bound : float, default=1e-6
    settings : IterativeSettings, optional
    backend : {"keops", "torch"}, default="keops"
        Operator backend (``"torch"``: row-blocked torch, the fallback).
    verbose : bool, default=False
        Progress bars while conditioning and predicting.

    Attributes
    ----------
    last_cg_iterations : int
        CG iterations (= Lanczos steps) of the last :meth:`log_marginal_likelihood`.

    Examples
    --------
    >>> import torch, gpytorch
    >>> from gpkern.models.iterative import IterativeGP
    >>> X = torch.linspace(0, 1, 50, dtype=torch.float64)[:, None]
    >>> Y = torch.sin(6 * X)
    >>> gp = IterativeGP(gpytorch.kernels.RBFKernel(), backend="torch").double()
    >>> mean, var = gp.posterior(X, Y).predict(X[:5])
    >>> mean.shape, var.shape
    (torch.Size([5, 1]), torch.Size([5]))
    """

    iterative = True
    #: Sum over the processes sharing the training rows (None: this process holds them all;
    #: :class:`gpkern.distributed.model.DistributedGP` splits them).
    _reduce: Reduce | None = None

    def __init__(
        self,
        kernel: gpytorch.kernels.Kernel,
        noise: float = 0.1,
        learn_noise: bool = True,
        noise_lower_bound: float = 1e-6,
        settings: IterativeSettings | None = None,
        backend: str = "keops",
        verbose: bool = False,
    ) -> None:
        super().__init__(
            kernel, noise=noise, learn_noise=learn_noise, noise_lower_bound=noise_lower_bound
        )
        if backend not in ("keops", "torch"):
            raise ValueError(f"backend must be 'keops' or 'torch', got {backend!r}.")
        self.settings = settings if settings is not None else IterativeSettings()
        self.backend = backend
        self.verbose = verbose
        # One fallback state for every operator of this model: a failed compile is tried once.
        self.keops_runtime = KeOpsRuntime()
        self._lml_cache: list[tuple[torch.Tensor, float]] = []
        self.last_cg_iterations = 0

    def operator(
        self, X: torch.Tensor, X2: torch.Tensor | None = None
    ) -> KernelOperator:  # (n, d) -> (n, m)
        """The lazy kernel matrix :math:`K(X, X_2)`."""
        return kernel_operator(self.kernel, X, X2, backend=self.backend, runtime=self.keops_runtime)

    def _rows(self, n: int) -> slice:
        """The training rows this process holds (all of them)."""
        return slice(0, n)

    def _shared(self, value: torch.Tensor) -> torch.Tensor:
        """A hyperparameter as it enters this process's row sums: itself (with the rows split,
        its backward pass sums the gradient over the processes)."""
        return value

    def _fingerprint(self) -> torch.Tensor:
        return torch.cat(
            [p.detach().reshape(-1).cpu() for p in self.parameters()] or [torch.zeros(0)]
        )

    def log_marginal_likelihood(
        self, X: torch.Tensor, Y: torch.Tensor, *, warn: bool = False
    ) -> torch.Tensor:  # (n, d), (n, t) -> ()
        r"""Stochastic estimate of the log marginal likelihood, summed over outputs.

        .. math::

            \log p(Y) = -\tfrac12 \sum_j y_j^\top A^{-1} y_j - \tfrac{t}{2}\log|A| - \tfrac{nt}{2}\log 2\pi

        with CG for the quadratic terms and stochastic Lanczos quadrature for :math:`\log|A|`;
        differentiable in the hyperparameters.
        """
        n, t = Y.shape
        cfg = self.settings
        rows, reduce = self._rows(n), self._reduce
        op = self.operator(X)  # this process's rows of K
        Y = Y[rows].to(X.dtype)
        noise = self._shared(self.noise.reshape(()).to(X.dtype))

        def amat(V: torch.Tensor) -> torch.Tensor:  # differentiable A(theta) V
            return op._matmul(V) + noise * V

        with torch.no_grad():
            fixed, s = op.detach(), float(noise)
            generator = torch.Generator().manual_seed(cfg.seed)
            L, _ = rp_cholesky(
                fixed.columns,
                fixed._diagonal(),
                min(cfg.preconditioner_rank, n),
                generator=generator,
                rows=None if reduce is None else rows,
                reduce=reduce,
            )
            pre = _LowRankPreconditioner(L, s, X.dtype, reduce)
            Z = pre.sample(cfg.num_probes, generator, n, rows)
            PZ = pre(Z)
            res = pcg(
                lambda V: fixed._matmul(V).add_(V, alpha=s),
                torch.cat([Y, Z], 1),
                pre,
                tol=cfg.cg_tol,
                max_iter=cfg.max_cg_iter,
                tridiag=True,
                advice=_TRAIN_CG_ADVICE,
                reduce=reduce,
            )
            T = res.tridiag[t:, : cfg.lanczos_iter, : cfg.lanczos_iter]
            value = pre.logdet(n) + slq_logdet(T, _summed(reduce, (Z * PZ).sum(0)))
            alpha = res.solution[:, :t]
            est = StochasticLogdet(value, res.solution[:, t:], PZ, res.n_iter)
        self.last_cg_iterations = res.n_iter
        # One differentiable product serves both surrogates: -alpha^T A(theta) alpha, whose
        # gradient is that of y^T A^{-1} y given the solve, and the log-determinant's. With
        # the rows split, each surrogate sums this process's rows: the values are made whole
        # here, the gradients by the hyperparameters' own reduction (``_shared``).
        AV = amat(torch.cat([alpha, PZ], 1))
        quad = -(alpha * AV[:, :t]).sum()
        inv_quad = _summed(reduce, (Y * alpha).sum()) + (quad - quad.detach())
        logdet = est.with_gradient(lambda _: AV[:, t:])
        lml = -0.5 * (inv_quad + t * logdet + n * t * math.log(2 * math.pi))
        self._lml_cache.append((self._fingerprint(), float(lml.detach())))
        del self._lml_cache[:-64]
        return lml

    def _cached_lml(self) -> float | None:
        now = self._fingerprint()
        for key, value in reversed(self._lml_cache):
            if key.shape == now.shape and torch.equal(key, now):
                return value
        return None

    def posterior(
        self, X: torch.Tensor, Y: torch.Tensor, *, warn: bool = True
    ) -> IterativePosterior:
        """Condition on ``(X, Y)`` by preconditioned CG; the result predicts in batches.

        The posterior's ``log_marginal_likelihood`` is the last training evaluation at these
        hyperparameters when there is one; otherwise (fixed hyperparameters) it is estimated
        on first access only, since its stochastic Lanczos quadrature costs more reductions
        than the conditioning solve.
        """
        with torch.no_grad():
            return IterativePosterior(self, X, Y, self._cached_lml())


def _summed(reduce: Reduce | None, value: torch.Tensor) -> torch.Tensor:
    return value if reduce is None else reduce(value)


class _LowRankPreconditioner:
    r""":math:`P = F F^\top + s I` applied by Woodbury, with :math:`\log|P|` and samples of
    :math:`\mathcal N(0, P)`; a narrower stored ``F`` is used in the working ``dtype``.

    With ``reduce``, ``F`` and every vector hold one process's rows and the :math:`k \times c`
    products :math:`F^\top V` are summed over the processes."""

    def __init__(
        self, F: torch.Tensor, noise: float, dtype: torch.dtype, reduce: Reduce | None = None
    ) -> None:
        self.F, self.noise, self.reduce = F, noise, reduce
        eye = torch.eye(F.shape[1], dtype=dtype, device=F.device)
        self.C_chol = torch.linalg.cholesky(noise * eye + _summed(reduce, factor_gram(F, dtype)))

    def __call__(self, V: torch.Tensor) -> torch.Tensor:  # (n, c) -> (n, c)
        # (F F^T + s I)^{-1} v = (v - F (s I + F^T F)^{-1} F^T v) / s.
        FtV = _summed(self.reduce, factor_t_matmul(self.F, V))
        inner = torch.cholesky_solve(FtV, self.C_chol)
        return (V - factor_matmul(self.F, inner)) / self.noise

    def logdet(self, n: int) -> torch.Tensor:
        # Determinant lemma: |F F^T + s I| = s^(n - k) |s I + F^T F|.
        k = self.F.shape[1]
        return (n - k) * math.log(self.noise) + 2 * self.C_chol.diagonal().log().sum()

    def sample(
        self, c: int, generator: torch.Generator, n: int, rows: slice
    ) -> torch.Tensor:  # (rows, c)
        k = self.F.shape[1]
        dtype, device = self.C_chol.dtype, self.C_chol.device
        E = torch.randn(k, c, generator=generator, dtype=dtype).to(device)
        # All n rows are drawn, the same numbers whichever rows this process keeps.
        noise = torch.randn(n, c, generator=generator, dtype=dtype)[rows].to(device)
        return factor_matmul(self.F, E).add_(noise, alpha=math.sqrt(self.noise))


class IterativePosterior:
    r"""GP posterior conditioned by CG on a lazy kernel operator (see :mod:`gpkern.models.iterative`).

    Attributes
    ----------
    alpha : torch.Tensor of shape (n, t)
        :math:`A^{-1} Y`.
    n_iter : int
        CG iterations of the conditioning solve.
    jitter : float
        Always 0 (no factorisation).
    log_marginal_likelihood : float
        The stochastic estimate at the conditioning hyperparameters; when ``lml`` is None it
        is computed on first access (``log_marginal_likelihood_pending`` is True until then).
    """

    def __init__(
        self, model: IterativeGP, X: torch.Tensor, Y: torch.Tensor, lml: float | None = None
    ) -> None:
        cfg = model.settings
        self.kernel, self.X, self.settings = model.kernel, X, cfg
        self.backend, self.verbose = model.backend, model.verbose
        self.keops_runtime = model.keops_runtime
        # The model builds the operators; with its training rows split across processes
        # (``rows``, ``reduce``) every array below of length n holds this process's rows.
        self._model = model
        self.rows, self.reduce = model._rows(X.shape[0]), model._reduce
        self.noise = float(model.noise.detach())
        self.jitter = 0.0
        self._lml = lml
        # Held for the deferred estimate: the model at the conditioning hyperparameters.
        self._lml_inputs = None if lml is not None else (copy.deepcopy(model), X, Y)
        self.op = model.operator(X).detach()
        n = X.shape[0]
        reduce = self.reduce
        rank = min(max(cfg.eval_preconditioner_rank or 1024, cfg.variance_rank), n)
        generator = torch.Generator().manual_seed(cfg.seed)
        dtype = X.dtype
        # The factor is the largest array of the solve (1.2 GB in float64 at rank 1,536 on
        # 100,000 points): stored in single precision, used in the working precision, and
        # allocated after the allocator has returned what earlier work (a dense subset fit) freed.
        trim_heap()
        L, _ = rp_cholesky(
            self.op.columns,
            self.op._diagonal(),
            rank,
            tol=1e-8,
            generator=generator,
            factor_dtype=torch.float32 if dtype == torch.float64 else dtype,
            rows=None if reduce is None else self.rows,
            reduce=reduce,
        )
        self.L = L  # (n, r), float32
        trim_heap()  # the factorisation's row blocks, before the solve's own allocations
        self._precondition = _LowRankPreconditioner(L, self.noise, dtype, reduce)
        res = pcg(
            self._matmul,
            Y[self.rows].to(X.dtype),
            self._precondition,
            tol=cfg.eval_cg_tol,
            max_iter=cfg.max_eval_cg_iter,
            keep=cfg.variance_directions,
            verbose=self.verbose,
            advice=_EVAL_CG_ADVICE,
            reduce=reduce,
        )
        self.alpha, self.n_iter = res.solution, res.n_iter
        D, AD = res.directions, res.matmul_directions
        del res
        # Variance subspace S = [L_v, D] (columns normalised), A^{-1} ~ S (S^T A S)^+ S^T. The
        # Gram S^T A S needs A L_v only (D^T A L_v = (A D)^T L_v, A symmetric), and S is never
        # copied: at n = 100,000 each (n, s) block is ~200 MB next to the factor L.
        Lv = L[:, : cfg.variance_rank].to(dtype)
        norms2 = _summed(reduce, torch.cat([(Lv * Lv).sum(0), (D * D).sum(0)]))
        norms = norms2.sqrt().clamp_min(torch.finfo(dtype).tiny)
        ALv = self._matmul(Lv)
        G11, G21 = Lv.T @ ALv, AD.T @ Lv
        del ALv
        G = torch.cat([torch.cat([G11, G21.T], 1), torch.cat([G21, D.T @ AD], 1)], 0)
        G = _summed(reduce, G)
        G = G / norms[:, None] / norms[None, :]
        G = 0.5 * (G + G.T)
        evals, evecs = torch.linalg.eigh(G)
        keep = evals > evals.max() * 1e3 * torch.finfo(G.dtype).eps
        M = evecs[:, keep] / evals[keep].sqrt() / norms[:, None]  # (s, s')
        r = Lv.shape[1]
        self.W = (Lv @ M[:r]).addmm_(D, M[r:])  # (n, s'): A^{-1} ~ W W^T
        del Lv
        trim_heap()

    @property
    def log_marginal_likelihood_pending(self) -> bool:
        """True while the log marginal likelihood has not been computed yet."""
        return self._lml is None

    @property
    def log_marginal_likelihood(self) -> float:
        r"""Stochastic estimate of :math:`\log p(Y)` at the conditioning hyperparameters."""
        if self._lml is None:
            model, X, Y = self._lml_inputs
            with torch.no_grad():
                self._lml = float(model.log_marginal_likelihood(X, Y))
            self._lml_inputs = None
        return self._lml

    def _matmul(self, V: torch.Tensor) -> torch.Tensor:  # (n, c) -> (n, c)
        # In place: with the variance subspace's 256 columns at n = 100,000 each temporary of
        # ``K V + s V`` is 200 MB, and two of them made the 100k NNGP run peak at 2.1 GB.
        return self.op._matmul(V).add_(V, alpha=self.noise)

    def _cross(self, Xs: torch.Tensor) -> KernelOperator:  # (m, n)
        return self._model.operator(Xs, self.X).detach()

    def _prior_var(self, Xs: torch.Tensor) -> torch.Tensor:  # (m,)
        return kernel_operator(
            self.kernel, Xs, Xs, backend=self.backend, runtime=self.keops_runtime
        ).detach()._diagonal()

    def _solve_columns(self, V: torch.Tensor) -> torch.Tensor:  # (n, b) -> (n, b)
        return pcg(
            self._matmul,
            V,
            self._precondition,
            tol=self.settings.eval_cg_tol,
            max_iter=self.settings.max_eval_cg_iter,
            advice=_EVAL_CG_ADVICE,
            reduce=self.reduce,
        ).solution

    @torch.no_grad()
    def predict(
        self,
        Xs: torch.Tensor,  # (m, d)
        *,
        full_cov: bool = False,
        exact_variance: bool = False,
        batch_size: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # (m, t), (m,) or (m, m)
        """Posterior mean of ``f`` and its variance (or full covariance) at ``Xs``.

        Means and (approximate) variances take one reduction per batch of test points; memory is
        :math:`O((n + b)(t + s))` for batch size :math:`b` and subspace size :math:`s`.
        ``exact_variance=True`` (and ``full_cov=True``) solve :math:`A Z = K_{X*}` by CG for each
        batch of test columns instead: exact to ``eval_cg_tol``, :math:`O(nb)` memory, one CG
        solve per batch.
        """
        bs = batch_size or self.settings.batch_size
        t = self.alpha.shape[1]
        coef = torch.cat([self.alpha, self.W], 1)
        means, variances = [], []
        starts = range(0, Xs.shape[0], bs)
        for start in tqdm(starts, desc="predict", disable=not self.verbose, leave=False):
            xb = Xs[start : start + bs]
            cross = self._cross(xb)
            out = cross._matmul(coef)
            means.append(out[:, :t])
            if full_cov:
                continue
            prior = self._prior_var(xb)
            if exact_variance:
                Kxb = self._dense_cross(xb)  # (n, b)
                Z = self._solve_columns(Kxb)
                reduction = _summed(self.reduce, (Kxb * Z).sum(0))
            else:
                reduction = (out[:, t:] ** 2).sum(1)
            variances.append((prior - reduction).clamp_min(0.0))
        mean = torch.cat(means)
        if full_cov:
            return mean, self._full_cov(Xs, bs)
        return mean, torch.cat(variances)

    def _dense_cross(self, xb: torch.Tensor) -> torch.Tensor:  # (n, b)
        op = kernel_operator(self.kernel, self.X[self.rows], xb, backend="torch").detach()
        return op.to_dense()

    def _full_cov(self, Xs: torch.Tensor, bs: int) -> torch.Tensor:  # (m, m)
        prior = kernel_operator(self.kernel, Xs, Xs, backend="torch").detach().to_dense()
        cross = self._cross(Xs)
        cols = []
        for start in range(0, Xs.shape[0], bs):
            Z = self._solve_columns(self._dense_cross(Xs[start : start + bs]))
            cols.append(cross._matmul(Z))
        cov = prior - torch.cat(cols, 1)
        return 0.5 * (cov + cov.T)
