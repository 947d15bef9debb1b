r"""Grid collocation Gaussian-process PDE solver (GP-HM, Fang et al., ICLR 2024).

The solution is a GP with a product kernel :math:`k(\mathbf x, \mathbf x') = \prod_j k_j(x_j -
x'_j)` over the dimensions, each factor a spectral mixture
(:mod:`gpkern.kernels.spectral`). The unknowns are the values :math:`U` of the solution on a
tensor grid :math:`X_1 \times \dots \times X_d`, whose Gram matrix is
:math:`K = K_1 \otimes \dots \otimes K_d`. Derivatives of the GP conditional mean at the grid
are derivative kernel matrices times :math:`K^{-1} U`, one mode at a time:

.. math::

    \partial_{x_j}^m u \big|_{\text{grid}} = (I \otimes \cdots \otimes D_j^{(m)} \otimes
        \cdots \otimes I)\, U, \qquad D_j^{(m)} = K_j^{(m)} K_j^{-1},\quad
        K_j^{(m)}[a, b] = k_j^{(m)}(x_{ja} - x_{jb}),

so nothing of size :math:`N \times N` (:math:`N = \prod_j N_j`) is ever formed;
:math:`\log|K| = \sum_j (N / N_j) \log|K_j|` and
:math:`U^\top K^{-1} U = \langle U, (K_1^{-1} \otimes \dots \otimes K_d^{-1}) U\rangle`.

Two ways of fitting are implemented.

``"adam"`` (the paper's): minimise over :math:`U`, the kernel hyperparameters and noise
precisions :math:`\tau_1, \tau_2` jointly,

.. math::

    \mathcal L = \tfrac12 \log|K| + \tfrac12 U^\top K^{-1} U
        + \lambda_b\big(\tfrac{\tau_1}{2}\|U_{\partial} - g\|^2 - \tfrac{N_b}{2}\log\tau_1\big)
        + \tfrac{\tau_2}{2}\|r(U)\|^2 - \tfrac{N_c}{2}\log\tau_2 .

``"profile"`` (gpkern's default for the built-in operators): the boundary and residual terms
are imposed exactly (the :math:`\tau \to \infty` limit), which leaves a square system in
:math:`U`. For a separable linear operator :math:`\mathcal L = \sum_j A_j` acting along single
dimensions (Poisson, advection) its interior block is a Kronecker sum,
:math:`\big(\sum_j I \otimes \cdots \otimes A_j^{II} \otimes \cdots \otimes I\big) U_I = R`,
solved exactly with one eigendecomposition per dimension
(:func:`~gpkern.linalg.kronecker.kron_sum_solve`, a Sylvester solve in 2-D). A pointwise
nonlinearity (Allen-Cahn) is handled by a fixed-point (Picard) iteration on that solve. The
hyperparameters then minimise the profiled objective

.. math::

    J(\theta) = \tfrac12 \log|K_\theta| + \tfrac12 U(\theta)^\top K_\theta^{-1} U(\theta),

with gradients through the solve (the adjoint of a Kronecker-sum system is another one).
Because :math:`U(\theta)` is exact for every :math:`\theta`, a few dozen L-BFGS steps replace
the :math:`10^5` Adam steps of the joint optimisation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from gpkern.exceptions import NotPSDError
from gpkern.kernels.spectral import spectral_mixture_1d, spectral_mixture_lags
from gpkern.linalg.cholesky import cholesky_solve, robust_cholesky
from gpkern.linalg.kronecker import apply_along_mode, kron_matmul, kron_sum_inverse, kron_sum_solve
from gpkern.linalg.toeplitz import (
    toeplitz_dense,
    toeplitz_lag_grad,
    toeplitz_logdet,
    toeplitz_matmul,
    toeplitz_solve,
)

__all__ = [
    "SPECTRA",
    "SpectralGridPrior",
    "uniform_grid",
    "toeplitz_derivatives",
    "lag_vectors",
    "GridCollocation",
]

#: spectrum name -> (envelope, learn frequencies?)
SPECTRA = {
    "student_t": ("matern52", True),
    "gaussian": ("gaussian", True),
    "se": ("gaussian", False),
    "matern": ("matern52", False),
}


def uniform_grid(
    domain: Sequence[tuple[float, float]],
    grid_size: Sequence[int],
    dtype: torch.dtype = torch.float64,
) -> list[torch.Tensor]:  # d x (N_j,)
    """Per-dimension uniform grids ``linspace(lo_j, hi_j, N_j)`` including the end points."""
    return [torch.linspace(lo, hi, n, dtype=dtype) for (lo, hi), n in zip(domain, grid_size)]


def toeplitz_derivatives(
    x: torch.Tensor,  # (N,) uniform grid
    weights: torch.Tensor,  # (Q,)
    frequencies: torch.Tensor,  # (Q,)
    scales: torch.Tensor,  # (Q,)
    envelope: str,
    orders: Sequence[int],
) -> list[torch.Tensor]:  # one (N, N) matrix per order
    r"""Derivative kernel matrices :math:`K^{(m)}[a, b] = k^{(m)}(x_a - x_b)` on a uniform grid.

    On a uniform grid the matrices are Toeplitz, so the kernel is evaluated only at the
    :math:`N` non-negative lags (:math:`k^{(m)}(-d) = (-1)^m k^{(m)}(d)`) and gathered:
    :math:`O(NQ)` kernel evaluations instead of :math:`O(N^2 Q)`.
    """
    return [toeplitz_dense(v) for v in lag_vectors(x, weights, frequencies, scales, envelope, orders)]


def lag_vectors(
    x: torch.Tensor,  # (N,) uniform grid
    weights: torch.Tensor,  # (Q,)
    frequencies: torch.Tensor,  # (Q,)
    scales: torch.Tensor,  # (Q,)
    envelope: str,
    orders: Sequence[int],
) -> list[torch.Tensor]:  # one (2N - 1,) vector per order
    r"""Toeplitz lag vectors :math:`v^{(m)}_t = k^{(m)}((t - N + 1) h)`, :math:`t = 0..2N-2`.

    :math:`K^{(m)}[a, b] = v^{(m)}_{a - b + N - 1}`; the kernel is evaluated (fused, closed-form
    backward: :func:`~gpkern.kernels.spectral.spectral_mixture_lags`) at the :math:`N`
    non-negative lags and mirrored with the parity :math:`(-1)^m`.
    """
    n = x.shape[0]
    h = (x[-1] - x[0]) / max(n - 1, 1)
    half = torch.arange(n, dtype=x.dtype, device=x.device) * h
    vals = spectral_mixture_lags(half, weights, frequencies, scales, envelope=envelope, orders=orders)
    return [torch.cat([(-1.0) ** m * v[1:].flip(0), v]) for m, v in zip(orders, vals)]


class _InteriorSolve1D(torch.autograd.Function):
    r"""1-D collocation solve :math:`X = A^{-1} R`, :math:`A = (M K^{-1})[I, I]`,
    :math:`M = \sum_t c_t K^{(m_t)}`, differentiable in :math:`R` and the lag vectors.

    With :math:`y = A^{-\top} G` and :math:`\tilde y, \tilde x` the zero-padded :math:`y, X`,
    the gradient in :math:`A` is :math:`-y X^\top` (rank one), hence
    :math:`\partial/\partial M = -\tilde y z^\top` and :math:`\partial/\partial K =
    (K^{-1} M^\top \tilde y) z^\top` with :math:`z = K^{-1}\tilde x`: the lag gradients are
    correlations, :math:`O(n^2)`, where autograd through the dense :math:`A` costs
    :math:`O(n^3)`.
    """

    @staticmethod
    def forward(ctx, R, info, v0, *vms):
        lu, L, Ks, coef, start, stop = info
        X = torch.linalg.lu_solve(*lu, R.unsqueeze(-1)).squeeze(-1)
        ctx.save_for_backward(X)
        ctx.info = info
        return X

    @staticmethod
    def backward(ctx, G):
        (X,) = ctx.saved_tensors
        lu, L, Ks, coef, start, stop = ctx.info
        n = L.shape[0]
        y = torch.linalg.lu_solve(*lu, G.unsqueeze(-1), adjoint=True)  # (n_I, 1)
        yt = y.new_zeros(n, 1)
        yt[start:stop] = y
        xt = X.new_zeros(n, 1)
        xt[start:stop, 0] = X
        z = cholesky_solve(xt, L)
        grads = [None] * len(Ks)
        Mty = 0.0
        for i, (K, c) in enumerate(zip(Ks, coef)):
            if ctx.needs_input_grad[3 + i]:
                grads[i] = -c * toeplitz_lag_grad(yt, z)
            Mty = Mty + c * (K.T @ yt)
        g0 = toeplitz_lag_grad(cholesky_solve(Mty, L), z) if ctx.needs_input_grad[2] else None
        return y[:, 0], None, g0, *grads


class SpectralGridPrior(torch.nn.Module):
    r"""Per-dimension spectral mixture hyperparameters of the product kernel on a grid.

    Parameters
    ----------
    dims : int
        Number of input dimensions :math:`d`.
    spectrum : {"student_t", "gaussian", "se", "matern"}
        ``"student_t"`` / ``"gaussian"``: :math:`Q` learnable components (GP-HM-StM / GP-HM-GM).
        ``"se"`` / ``"matern"``: one component with frequency fixed at 0, i.e. a plain squared
        exponential or Matérn-5/2 kernel (the baselines).
    n_components : int
        :math:`Q` for the mixture spectra.
    max_frequency : sequence of float
        Initial frequencies per dimension are ``linspace(0, max_frequency_j, Q)``.
    init_scale : float or sequence of float
        Initial envelope rates :math:`\ell` per dimension.
    """

    def __init__(
        self,
        dims: int,
        spectrum: str,
        n_components: int,
        max_frequency: Sequence[float],
        init_scale: float | Sequence[float],
        dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__()
        if spectrum not in SPECTRA:
            raise ValueError(f"spectrum must be one of {sorted(SPECTRA)}, got {spectrum!r}.")
        self.spectrum = spectrum
        self.envelope, mixture = SPECTRA[spectrum]
        q = int(n_components) if mixture else 1
        scales = torch.as_tensor(init_scale, dtype=dtype).reshape(-1, 1).expand(dims, q)
        freqs = torch.stack([torch.linspace(0.0, 1.0, q, dtype=dtype) * float(f) for f in max_frequency])
        if not mixture:
            freqs = torch.zeros(dims, 1, dtype=dtype)
        self.log_weights = torch.nn.Parameter(torch.full((dims, q), -math.log(q), dtype=dtype))
        self.log_scales = torch.nn.Parameter(scales.log().clone())
        self.frequencies = torch.nn.Parameter(freqs, requires_grad=mixture)

    @property
    def weights(self) -> torch.Tensor:  # (d, Q)
        return self.log_weights.exp()

    @property
    def scales(self) -> torch.Tensor:  # (d, Q)
        return self.log_scales.exp()

    def factor_matrices(self, grids: Sequence[torch.Tensor], orders: Sequence[int]) -> list[list[torch.Tensor]]:
        """For each dimension, the Toeplitz derivative kernel matrices of the given orders."""
        return [[toeplitz_dense(v) for v in per_dim] for per_dim in self.factor_lags(grids, orders)]

    def factor_lags(self, grids: Sequence[torch.Tensor], orders: Sequence[int]) -> list[list[torch.Tensor]]:
        """For each dimension, the Toeplitz lag vectors (:func:`lag_vectors`) of the given orders."""
        w, s = self.weights, self.scales
        return [lag_vectors(x, w[j], self.frequencies[j], s[j], self.envelope, orders) for j, x in enumerate(grids)]

    def cross_covariance(self, j: int, x_new: torch.Tensor, x_grid: torch.Tensor) -> torch.Tensor:  # (m,), (N_j,) -> (m, N_j)
        """:math:`k_j(x_{new}, x_{grid})` for prediction off the grid."""
        (k,) = spectral_mixture_1d(
            x_new[:, None] - x_grid[None, :],
            self.weights[j],
            self.frequencies[j],
            self.scales[j],
            envelope=self.envelope,
            orders=(0,),
        )
        return k


class GridCollocation:
    r"""Grid, boundary, derivative operators and losses for one PDE problem (torch only).

    Parameters
    ----------
    grids : list of torch.Tensor of shape (N_j,)
        Uniform per-dimension grids (end points included).
    source : torch.Tensor of shape (N_1, ..., N_d)
        Source term on the grid (only interior values are used).
    boundary : torch.Tensor of shape (N_1, ..., N_d)
        Dirichlet values on the grid (only boundary values are used).
    linear_terms : list of (dim, order, coefficient), optional
        The separable linear part :math:`\sum c\, \partial_{x_{dim}}^{order}` of the operator;
        ``None`` when the operator is only available as a residual callable.
    nonlinearity : callable, optional
        Pointwise term :math:`n(u)` added to the linear part (Allen-Cahn: :math:`u^3 - u`).
    residual : callable, optional
        ``residual(points, U, derivs) -> r`` on the interior points for user-defined operators.
    order : int
        Highest derivative order the operator uses.
    dirichlet_sides : list of (bool, bool), optional
        Per dimension, whether the low / high side carries Dirichlet data (default both); the
        other grid points carry PDE residuals. First-order operators need data on the inflow
        sides only.
    jitter : float
        Jitter added to the diagonal of each factor :math:`K_j` (absolute, as in the paper).
    """

    def __init__(
        self,
        grids: list[torch.Tensor],
        source: torch.Tensor,
        boundary: torch.Tensor,
        *,
        linear_terms: list[tuple[int, int, float]] | None,
        nonlinearity: Callable[[torch.Tensor], torch.Tensor] | None = None,
        residual: Callable | None = None,
        order: int = 2,
        jitter: float = 1e-6,
        dirichlet_sides: Sequence[tuple[bool, bool]] | None = None,
    ) -> None:
        self.grids = grids
        self.d = len(grids)
        self.shape = tuple(len(x) for x in grids)
        self.source = source
        self.linear_terms = linear_terms
        self.nonlinearity = nonlinearity
        self.residual_fn = residual
        self.order = order
        self.jitter = jitter
        sides = dirichlet_sides or [(True, True)] * self.d
        # Unknown (and equation) block: the grid minus the Dirichlet sides.
        self.interior = tuple(slice(int(lo), n - int(hi)) for n, (lo, hi) in zip(self.shape, sides))
        mask = torch.ones(self.shape, dtype=torch.bool)
        mask[self.interior] = False
        self.boundary_mask = mask
        self.boundary_values = torch.where(mask, boundary, torch.zeros_like(boundary))
        self.n_boundary = int(mask.sum())
        self.n_interior = int(math.prod(s.stop - s.start for s in self.interior))
        if linear_terms is not None:
            self.orders = sorted({0} | {m for _, m, _ in linear_terms})  # noqa: C401
        else:
            self.orders = list(range(order + 1))
        self.multi_indices = _multi_indices(self.d, order)

    # -- kernel algebra ---------------------------------------------------------------------
    def factors(self, prior: SpectralGridPrior) -> dict:
        r"""Cholesky factors, log-determinant and Toeplitz derivative kernel matrices.

        Per dimension: the lag vectors :math:`v_j^{(m)}` (differentiable; every kernel-matrix
        operation below has a closed-form backward to them), their dense matrices
        :math:`K_j^{(m)}` (constants), and the factor :math:`L_j` of :math:`K_j + \epsilon I`.
        """
        lags = prior.factor_lags(self.grids, self.orders)
        chol, logdets, kmats, vecs, padded = [], [], [], [], []
        for per_order in lags:
            v0 = per_order[0]
            n = (v0.shape[0] + 1) // 2
            if not torch.isfinite(v0).all():
                raise NotPSDError(
                    "The kernel matrix contains NaN or inf entries; check the kernel hyperparameters "
                    "and that the inputs are finite."
                )
            # Absolute jitter, as in the paper: a relative one would let the joint ("adam") loss
            # run to -inf by shrinking every weight (log|K| unbounded below). The jitter sits on
            # the zero lag, so K + eps I stays Toeplitz.
            bump = torch.zeros_like(v0)
            bump[n - 1] = self.jitter
            v0 = v0 + bump
            with torch.no_grad():
                dense = {m: toeplitz_dense(v) for m, v in zip(self.orders, per_order)}
                L, info = torch.linalg.cholesky_ex(toeplitz_dense(v0))
                if info:
                    L, extra = robust_cholesky(toeplitz_dense(v0), warn=False)
                    bump = torch.zeros_like(v0)
                    bump[n - 1] = extra
            if info:
                v0 = v0 + bump
            chol.append(L)
            vecs.append(dict(zip(self.orders, per_order)))
            padded.append(v0)
            kmats.append(dense)
            logdets.append(toeplitz_logdet(v0, chol=L))
        N = math.prod(self.shape)
        logdet = sum(N / n * ld for n, ld in zip(self.shape, logdets))
        # lags[j][m]: v_j^(m); padded[j]: the lags of K_j + eps I (the factored matrix)
        return {"chol": chol, "lags": vecs, "padded": padded, "logdet": logdet, "K": kmats, "D": [{} for _ in chol]}

    def operator(self, fac: dict, j: int, m: int) -> torch.Tensor:
        r""":math:`D_j^{(m)} = K_j^{(m)} (K_j + \epsilon I)^{-1}` (cached in ``fac``)."""
        D = fac["D"][j].get(m)
        if D is None:
            if m not in fac["K"][j]:
                raise KeyError(f"derivative order {m} was not prepared for dimension {j}.")
            # K^(m)^T is the Toeplitz matrix of the reversed lag vector.
            KmT = toeplitz_dense(fac["lags"][j][m].flip(0))
            D = toeplitz_solve(fac["padded"][j], KmT, chol=fac["chol"][j]).T
            fac["D"][j][m] = D
        return D

    @staticmethod
    def _solve_mode(fac: dict, X: torch.Tensor, j: int) -> torch.Tensor:
        # The loss solves with the same U more than once (quadratic term and derivatives):
        # reuse the result (and its autograd node) within this factorisation.
        cache = fac.setdefault("solves", {})
        key = (id(X), j, torch.is_grad_enabled())
        hit = cache.get(key)
        if hit is not None and hit[0] is X:
            return hit[1]
        out = apply_along_mode(lambda B: toeplitz_solve(fac["padded"][j], B, chol=fac["chol"][j]), X, j)
        cache[key] = (X, out)
        return out

    @staticmethod
    def _matmul_mode(fac: dict, X: torch.Tensor, j: int, m: int, rows: slice) -> torch.Tensor:
        K = fac["K"][j][m]
        return apply_along_mode(lambda Y: toeplitz_matmul(fac["lags"][j][m], Y, rows=rows, dense=K), X, j)

    def quad(self, fac: dict, U: torch.Tensor) -> torch.Tensor:
        r""":math:`U^\top K^{-1} U` with :math:`K^{-1} = \otimes_j K_j^{-1}` applied mode by mode."""
        A = U
        for j in range(self.d):
            A = self._solve_mode(fac, A, j)
        return (U * A).sum()

    def derivative(self, fac: dict, U: torch.Tensor, alpha: Sequence[int], interior: bool = True) -> torch.Tensor:
        """Derivative of the GP conditional mean with multi-index ``alpha`` at the grid.

        Applied as :math:`K_j^{(m)} (K_j^{-1} U)` along each mode (matrix-vector work only).
        """
        out = U
        for j, m in enumerate(alpha):
            if m == 0:
                # D^(0) = K K^{-1} = I at the grid.
                out = out[(slice(None),) * j + (self.interior[j],)] if interior else out
                continue
            if m not in fac["K"][j]:
                raise KeyError(f"derivative order {m} was not prepared for dimension {j}.")
            rows = self.interior[j] if interior else slice(None)
            out = self._matmul_mode(fac, self._solve_mode(fac, out, j), j, m, rows)
        return out

    def residual(self, fac: dict, U: torch.Tensor, points: torch.Tensor | None = None) -> torch.Tensor:
        """PDE residual on the interior grid, shape ``(N_1 - 2, ..., N_d - 2)``."""
        f = self.source[self.interior]
        if self.linear_terms is not None:
            r = -f
            for j, m, c in self.linear_terms:
                alpha = [0] * self.d
                alpha[j] = m
                r = r + c * self.derivative(fac, U, alpha)
            if self.nonlinearity is not None:
                r = r + self.nonlinearity(U[self.interior])
            return r
        derivs = {a: self.derivative(fac, U, a).reshape(-1) for a in self.multi_indices}
        r = self.residual_fn(points, U[self.interior].reshape(-1), derivs)
        return r.reshape(f.shape) - f

    # -- the exact (profile) solve ----------------------------------------------------------
    def interior_operators(self, fac: dict) -> list[torch.Tensor]:
        """Per-dimension interior blocks :math:`A_j^{II} = \\sum_m c_{jm} D_j^{(m)}[I, I]`."""
        mats = []
        for j, _n in enumerate(self.shape):
            sl = self.interior[j]
            A = torch.zeros(sl.stop - sl.start, sl.stop - sl.start, dtype=self.source.dtype)
            for jj, m, c in self.linear_terms:
                if jj == j:
                    A = A + c * self.operator(fac, j, m)[sl, sl]
            mats.append(A)
        return mats

    def _interior_1d(self, fac: dict) -> tuple[torch.Tensor, tuple]:
        """1-D: the dense interior block :math:`A` (a constant) and its LU factors, cached."""
        st = fac.get("interior_1d")
        if st is None:
            sl = self.interior[0]
            with torch.no_grad():
                M = sum(c * fac["K"][0][m] for _, m, c in self.linear_terms)
                # A = (M K^{-1})[I, I] = ((K^{-1} M[I, :]^T)[I, :])^T
                A = cholesky_solve(M[sl].T.contiguous(), fac["chol"][0])[sl].T.contiguous()
                st = fac["interior_1d"] = (A, torch.linalg.lu_factor(A))
        return st

    def _interior_solve_1d(self, fac: dict, R: torch.Tensor) -> torch.Tensor:  # (n_I,) -> (n_I,)
        """Differentiable :math:`A^{-1} R` in 1-D with the :math:`O(n^2)` backward of
        :class:`_InteriorSolve1D` (the gradient of a dense interior block is rank one)."""
        A, lu = self._interior_1d(fac)
        ms = sorted({m for _, m, _ in self.linear_terms})
        coef = [sum(c for _, mm, c in self.linear_terms if mm == m) for m in ms]
        sl = self.interior[0]
        info = (lu, fac["chol"][0], [fac["K"][0][m] for m in ms], coef, sl.start, sl.stop)
        return _InteriorSolve1D.apply(R, info, fac["padded"][0], *[fac["lags"][0][m] for m in ms])

    def lift_rhs(self, fac: dict) -> torch.Tensor:
        """Interior right-hand side: source minus the linear operator applied to the boundary lift."""
        G = self.boundary_values
        r = self.source[self.interior].clone()
        for j, m, c in self.linear_terms:
            alpha = [0] * self.d
            alpha[j] = m
            r = r - c * self.derivative(fac, G, alpha)
        return r

    def assemble(self, X: torch.Tensor) -> torch.Tensor:
        """Full grid values from interior values and the boundary data."""
        U = self.boundary_values.clone()
        U[self.interior] = X
        return U

    def solve(
        self,
        fac: dict,
        *,
        max_picard: int = 200,
        tol: float = 1e-13,
        unroll: int = 3,
        start: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, int]:
        """Exact collocation solution :math:`U(\\theta)` (differentiable), and Picard iterations used."""
        if self.d == 1:
            A1, lu = self._interior_1d(fac)

            def solve_linear(R):
                return self._interior_solve_1d(fac, R)
        else:
            mats = self.interior_operators(fac)

            def solve_linear(R):
                return kron_sum_solve(mats, R)
        R = self.lift_rhs(fac)
        if self.nonlinearity is None:
            return self.assemble(solve_linear(R)), 0
        # Fixed point X = S^{-1}(R - n(X)); the Laplacian dominates n'(u) so it contracts fast.
        with torch.no_grad():
            Rd = R.detach()
            if self.d == 1:
                inverse = lambda R: torch.linalg.lu_solve(*lu, R.unsqueeze(-1)).squeeze(-1)  # noqa: E731
            else:
                inverse = kron_sum_inverse([A.detach() for A in mats])
            X = inverse(Rd) if start is None else start[self.interior].clone()
            it = 0
            for it in range(1, max_picard + 1):  # noqa: B007 (returned)
                if self.d == 1:
                    # 1-D: Newton on the dense (n x n) system, robust where Picard may not contract.
                    with torch.enable_grad():
                        Xg = X.detach().requires_grad_(True)
                        (slope,) = torch.autograd.grad(self.nonlinearity(Xg).sum(), Xg)
                    A = A1
                    F = A @ X + self.nonlinearity(X) - Rd
                    step = torch.linalg.solve(A + torch.diag(slope), F)
                    # Damped: halve the step until the residual norm decreases.
                    t, base = 1.0, F.norm()
                    for _ in range(30):
                        X_new = X - t * step
                        if (A @ X_new + self.nonlinearity(X_new) - Rd).norm() < base:
                            break
                        t *= 0.5
                else:
                    X_new = inverse(Rd - self.nonlinearity(X))
                if not torch.isfinite(X_new).all():
                    X = X_new
                    break
                change = (X_new - X).norm() / X_new.norm().clamp_min(1e-300)
                X = X_new
                if change < tol:
                    break
        # A few differentiable steps from the converged point give the implicit gradient up to
        # a factor (contraction)^unroll.
        if not torch.isfinite(X).all():
            return self.assemble(X), it
        for _ in range(unroll):
            X = solve_linear(R - self.nonlinearity(X))
        return self.assemble(X), it

    def profile_objective(self, fac: dict, U: torch.Tensor) -> torch.Tensor:
        r""":math:`J = \tfrac12\log|K| + \tfrac12 U^\top K^{-1} U`, normalised by :math:`N`."""
        N = U.numel()
        return (0.5 * fac["logdet"] + 0.5 * self.quad(fac, U)) / N

    def joint_loss(
        self,
        fac: dict,
        U: torch.Tensor,
        log_tau_b: torch.Tensor,
        log_tau_r: torch.Tensor,
        boundary_weight: float,
        points: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The paper's loss (divided by :math:`N`), for the ``"adam"`` method."""
        N = U.numel()
        bgap = ((U - self.boundary_values)[self.boundary_mask] ** 2).sum()
        r = self.residual(fac, U, points)
        rgap = (r**2).sum()
        nb, nc = self.n_boundary, r.numel()
        loss = 0.5 * fac["logdet"] + 0.5 * self.quad(fac, U)
        loss = loss + boundary_weight * (0.5 * log_tau_b.exp() * bgap - 0.5 * nb * log_tau_b)
        loss = loss + 0.5 * log_tau_r.exp() * rgap - 0.5 * nc * log_tau_r
        return loss / N

    def predict(self, prior: SpectralGridPrior, fac: dict, U: torch.Tensor, X: torch.Tensor) -> torch.Tensor:  # (m, d) -> (m,)
        r"""GP conditional mean :math:`k(X, \text{grid}) K^{-1} U` off the grid.

        With :math:`A = (\otimes_j K_j^{-1}) U` and cross-covariances :math:`C_j = k_j(X_{:, j},
        X_j)`, the mean at point :math:`i` is :math:`\sum_{a} \prod_j C_j[i, a_j] A_{a}`,
        contracted one dimension at a time (never an :math:`m \times N` matrix).
        """
        A = kron_matmul([torch.cholesky_inverse(L) for L in fac["chol"]], U.reshape(-1)).reshape(self.shape)
        C = [prior.cross_covariance(j, X[:, j], x) for j, x in enumerate(self.grids)]
        out = torch.tensordot(C[0], A, dims=([1], [0]))  # (m, N_2, ..., N_d)
        for j in range(1, self.d):
            out = (out * C[j].reshape(C[j].shape[0], *([1] * (j - 1)), -1, *([1] * (self.d - j - 1)))).sum(1)
        return out

    def interior_points(self) -> torch.Tensor:  # (n_interior, d)
        mesh = torch.meshgrid(*[x[sl] for x, sl in zip(self.grids, self.interior)], indexing="ij")
        return torch.stack([m.reshape(-1) for m in mesh], dim=-1)


def _multi_indices(d: int, order: int) -> list[tuple[int, ...]]:
    out = [()]
    for _ in range(d):
        out = [a + (m,) for a in out for m in range(order + 1)]
    return sorted((a for a in out if sum(a) <= order), key=lambda a: (sum(a), a))
