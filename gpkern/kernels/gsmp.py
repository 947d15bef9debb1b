r"""The grid spectral mixture product (GSMP) kernel of Suwandi et al. (2023).

A GSMP kernel is a linear multiple kernel whose basis kernels are spectral mixture product
components with *fixed* frequencies and bandwidths on a grid:

.. math::

    k(x, x') = \sum_{a=1}^{A} \theta_a \prod_{p=1}^{P}
        \exp\!\big(-2\pi^2 \tau_p^2 \sigma_{a,p}^2\big) \cos(2\pi \mu_{a,p} \tau_p),
    \qquad \tau = x - x', \quad \theta \ge 0.

Each basis kernel is the Fourier transform of a symmetrised Gaussian spectral density centred
at :math:`\pm\mu_a`, so it is PSD, and only the weights :math:`\theta` are learned. With the
frequencies on a fine uniform grid over :math:`[0, \text{Nyquist}]` the learned :math:`\theta`
is a sparse estimate of the data's spectrum.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from gpkern.kernels.multiple import WeightedKernelSum
from gpkern.linalg.keops.formula import SpectralSumFormula
from gpkern.linalg.keops.registry import register_formula

__all__ = ["GSMPKernel", "gsmp_grid"]


def gsmp_grid(
    X: torch.Tensor,  # (n, P)
    n_components: int | None = None,
    bandwidths: float | Sequence[float] | None = None,
    *,
    generator: torch.Generator | None = None,
    max_components: int = 100,
    n_samples: int | None = None,
    additive: float | Sequence[float] = (),
) -> tuple[torch.Tensor, torch.Tensor]:  # (A, P), (A, P)
    r"""Frequencies and bandwidths of a GSMP kernel, from the inputs' sampling.

    The highest frequency placed along input dimension :math:`p` is the Nyquist frequency
    :math:`\nu_p = 0.5 / \Delta_p` of the effective sampling interval

    .. math::

        \Delta_p = \max\!\Big(\operatorname{median\ gap}_p,\;
            \frac{\text{range}_p}{n^{1/P} - 1}\Big),

    the larger of the median gap between sorted distinct values (the sampling interval of
    regularly sampled data) and the spacing that :math:`n` points spread over a
    :math:`P`-dimensional box have along each axis. Scattered data in several dimensions
    resolve far lower frequencies than their per-feature gaps suggest; frequencies beyond
    :math:`\nu_p` only let the kernel interpolate noise.

    The frequencies of dimension :math:`p` are ``n_components`` uniform points over
    :math:`[0, \nu_p]`. With ``n_components=None`` their number is
    :math:`Q = \min(\max_p K_p + 1, Q_{\max})` (:math:`Q_{\max}` = ``max_components``),
    where :math:`K_p = \lfloor \nu_p (\text{range}_p + \Delta_p) \rfloor` is the number of
    non-zero discrete Fourier frequencies the data resolve along :math:`p` (:math:`n/2` for a
    regular series of :math:`n` points): a long series gets the paper's fine grid of 100,
    scattered data in several dimensions a handful. (The Fourier frequencies
    :math:`k / (\text{range}_p + \Delta_p)` themselves would make a poor dictionary for a
    series: their cosines can interpolate any :math:`n` points, and every one is periodic
    with the observation window, so a forecast repeats the start of the series.)

    In several dimensions each dimension's column is permuted independently (a
    Latin-hypercube design), so that the number of components stays :math:`Q` instead of
    growing as :math:`Q^P`; the first component keeps frequency zero in every dimension, so
    that smooth trends are always representable.

    Every bandwidth in ``bandwidths`` gets a copy of the frequency grid, so the kernel has
    :math:`A = Q \cdot |\text{bandwidths}|` components. Bandwidths are expressed as fractions
    of :math:`1/\text{range}_p`, the lowest frequency the data can resolve: a relative
    bandwidth :math:`b` gives each component a Gaussian envelope of length-scale
    :math:`\text{range}_p / (2\pi b)`.

    Every relative bandwidth :math:`b` in ``additive`` adds :math:`P` first-order components
    (only when :math:`P > 1`): component :math:`p` has frequency zero, bandwidth
    :math:`b / \text{range}_p` along dimension :math:`p` and zero along the others, i.e. the
    squared-exponential kernel :math:`\exp(-2\pi^2 b^2 \tau_p^2 / \text{range}_p^2)` of
    :math:`x_p` alone. The grid's components treat all dimensions alike (their envelopes share
    one relative length-scale); sparse weights on these give the kernel per-input relevance,
    as automatic relevance determination (ARD) does for a GP, without a length-scale search.
    They come after the grid: :math:`A = Q \cdot |\text{bandwidths}| + P \cdot
    |\text{additive}|`.

    Parameters
    ----------
    X : torch.Tensor of shape (n, P)
        Inputs.
    n_components : int, optional
        Grid size :math:`Q` per bandwidth; ``None`` chooses it from the data (see above).
    bandwidths : float or sequence of float, optional
        Relative bandwidths (see above); default ``(0.001,)``, as in the reference code
        (nearly pure cosines).
    generator : torch.Generator, optional
        Seeds the per-dimension permutations when :math:`P > 1`.
    max_components : int, default=100
        Largest grid chosen from the data (``n_components=None``).
    n_samples : int, optional
        The number :math:`n` of points the grid is for; default ``X.shape[0]``. Pass it when
        ``X`` only stands in for the data's ranges and spacings (as in
        :mod:`gpkern.distributed.slimkl`, where no agent sees all points).
    additive : float or sequence of float, default=()
        Relative bandwidths of first-order components (see above); none by default.

    Returns
    -------
    means : torch.Tensor of shape (A, P)
    bandwidths : torch.Tensor of shape (A, P)

    Examples
    --------
    >>> import torch
    >>> from gpkern.kernels.gsmp import gsmp_grid
    >>> t = torch.arange(48.0, dtype=torch.float64)[:, None] / 12  # four years, monthly
    >>> means, bw = gsmp_grid(t, bandwidths=0.001)
    >>> means.shape, round(float(means[-1, 0]), 9)  # 25 frequencies up to Nyquist, 6 per year
    (torch.Size([25, 1]), 6.0)
    >>> X = torch.rand(400, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    >>> gsmp_grid(X, bandwidths=(0.001, 0.5))[0].shape  # 400 points resolve ~2 values per axis
    torch.Size([4, 8])
    >>> means, bw = gsmp_grid(X, bandwidths=(0.001, 0.5), additive=0.5)  # + one per input
    >>> means.shape, torch.equal(bw[4:] > 0, torch.eye(8, dtype=torch.bool))
    (torch.Size([12, 8]), True)
    """
    if X.ndim != 2 or X.shape[0] < 2:
        raise ValueError(f"X must have shape (n, P) with n >= 2, got {tuple(X.shape)}.")
    if n_components is not None and int(n_components) < 1:
        raise ValueError(f"n_components must be >= 1, got {n_components}.")
    rel = (0.001,) if bandwidths is None else (
        (float(bandwidths),) if isinstance(bandwidths, (int, float)) else tuple(map(float, bandwidths))
    )
    if not rel or any(not math.isfinite(b) or b < 0 for b in rel):
        raise ValueError(f"bandwidths must be finite and non-negative, got {bandwidths!r}.")
    add = (float(additive),) if isinstance(additive, (int, float)) else tuple(map(float, additive))
    if any(not math.isfinite(b) or b < 0 for b in add):
        raise ValueError(f"additive must be finite and non-negative, got {additive!r}.")
    n, P = X.shape
    n = n if n_samples is None else int(n_samples)
    per_axis = n ** (1.0 / P) - 1.0  # gaps per axis of n points spread over a P-dim box
    spacing, span = [], []
    for p in range(P):
        u = torch.unique(X[:, p])
        rng = float(u.max() - u.min())
        if rng <= 0:  # a constant column: only frequency zero is meaningful
            spacing.append(math.inf)
            span.append(1.0)
            continue
        gap = float(u.diff().median())
        spacing.append(max(gap, rng / per_axis) if per_axis > 0 else math.inf)
        span.append(rng)
    nyq = [0.5 / s for s in spacing]
    if n_components is None:
        counts = [math.floor(f * (r + d) + 1e-9) if math.isfinite(d) else 0
                  for f, r, d in zip(nyq, span, spacing)]
        Q = min(max(counts) + 1, int(max_components))
    else:
        Q = int(n_components)
    cols = []
    for p in range(P):
        grid = torch.linspace(0.0, nyq[p], Q, dtype=X.dtype, device=X.device)
        if P > 1 and Q > 1:
            # Row 0 stays at zero frequency in every dimension (a pure envelope: trends);
            # the other rows are permuted per dimension.
            perm = torch.cat([torch.zeros(1, dtype=torch.long), 1 + torch.randperm(Q - 1, generator=generator)])
            grid = grid[perm.to(X.device)]
        cols.append(grid)
    means = torch.stack(cols, dim=-1)  # (Q, P)
    inv_span = torch.tensor([1.0 / s for s in span], dtype=X.dtype, device=X.device)
    all_means = means.repeat(len(rel), 1)
    all_bw = torch.cat([b * inv_span.expand(Q, P) for b in rel], dim=0)
    if P > 1 and add:
        eye = torch.diag(inv_span)  # row p: bandwidth along p only
        first = torch.cat([b * eye for b in add], dim=0)  # (P |add|, P)
        all_means = torch.cat([all_means, torch.zeros_like(first)], dim=0)
        all_bw = torch.cat([all_bw, first], dim=0)
    return all_means, all_bw


class GSMPKernel(WeightedKernelSum):
    r"""Grid spectral mixture product kernel: sparse spectrum, non-negative weights.

    .. math::

        k(x, x') = \sum_{a=1}^{A} \theta_a \prod_{p=1}^{P}
            \exp\!\big(-2\pi^2 \tau_p^2 \sigma_{a,p}^2\big) \cos(2\pi \mu_{a,p} \tau_p)

    with :math:`\tau = x - x'`, fixed frequencies :math:`\mu` and bandwidths :math:`\sigma`
    (buffers), and learned weights :math:`\theta \ge 0` (parameter ``raw_weights``,
    :math:`\theta = r^2`). Use :func:`gsmp_grid` (or :meth:`from_data`) to place the grid from
    data; :class:`~gpkern.estimators.MultipleKernelRegressor` does this for you.

    Parameters
    ----------
    n_components : int, default=20
        Number of components :math:`A` when ``means`` is not given.
    means : torch.Tensor of shape (A, P) or (A,), optional
        Fixed frequencies :math:`\mu` (cycles per unit of :math:`x`). Default: uniform grid
        over :math:`[0, 0.5]` (Nyquist for unit spacing), shared by all dimensions.
    bandwidths : float or torch.Tensor of shape (A, P) or (A,), default=0.01
        Fixed spectral standard deviations :math:`\sigma`.
    weights : torch.Tensor of shape (A,), optional
        Initial weights; default :math:`1/A` each.
    ard_num_dims : int, optional
        Number of input dimensions :math:`P` when ``means`` is one-dimensional; without it a
        single frequency per component is shared by every dimension.
    batch_shape : torch.Size, optional
        Batch shape (one weight vector per batch member).
    **kwargs
        Passed to :class:`gpytorch.kernels.Kernel` (e.g. ``active_dims``).

    Examples
    --------
    >>> import torch
    >>> from gpkern.kernels import GSMPKernel
    >>> k = GSMPKernel(means=torch.tensor([0.0, 0.25]), bandwidths=0.0,
    ...                weights=torch.tensor([1.0, 2.0]))
    >>> x = torch.tensor([[0.0], [1.0]])
    >>> k(x).to_dense().detach().round(decimals=5)  # 1 + 2 cos(2 pi 0.25 tau)
    tensor([[3., 1.],
            [1., 3.]])
    """

    def __init__(
        self,
        n_components: int = 20,
        means: torch.Tensor | None = None,
        bandwidths: float | torch.Tensor = 0.01,
        weights: torch.Tensor | None = None,
        ard_num_dims: int | None = None,
        batch_shape: torch.Size = torch.Size([]),  # noqa: B008 (GPyTorch convention)
        **kwargs,
    ) -> None:
        dtype = torch.get_default_dtype()
        P = 1 if ard_num_dims is None else int(ard_num_dims)
        if means is None:
            means = torch.linspace(0.0, 0.5, int(n_components), dtype=dtype)
        means = torch.as_tensor(means, dtype=dtype)
        if means.ndim == 1:
            means = means[:, None].expand(-1, P)
        if means.ndim != 2:
            raise ValueError(f"means must have shape (A,) or (A, P), got {tuple(means.shape)}.")
        A, P = means.shape
        if ard_num_dims is not None and P != int(ard_num_dims):
            raise ValueError(f"means has {P} columns but ard_num_dims={ard_num_dims}.")
        bw = torch.as_tensor(bandwidths, dtype=dtype)
        if bw.ndim == 1:
            bw = bw[:, None]
        bw = bw.expand(A, P) if bw.ndim in (0, 2) else bw
        if bw.shape != (A, P):
            raise ValueError(f"bandwidths must be a scalar or have shape (A,) or (A, P) = ({A}, {P}).")
        if not torch.isfinite(means).all() or not torch.isfinite(bw).all() or (bw < 0).any():
            raise ValueError("means must be finite and bandwidths finite and non-negative.")
        super().__init__(
            A,
            weights=weights,
            batch_shape=batch_shape,
            ard_num_dims=ard_num_dims if ard_num_dims is not None and P > 1 else None,
            **kwargs,
        )
        # Buffers carry the batch shape so that GPyTorch's batch indexing (kernel[i]) works.
        self.register_buffer("means", means.expand(*self.batch_shape, A, P).clone())
        self.register_buffer("bandwidths", bw.expand(*self.batch_shape, A, P).clone())

    @classmethod
    def from_data(
        cls,
        X: torch.Tensor,  # (n, P)
        n_components: int | None = None,
        bandwidths: float | Sequence[float] | None = None,
        *,
        generator: torch.Generator | None = None,
        n_samples: int | None = None,
        additive: float | Sequence[float] = (),
        **kwargs,
    ) -> GSMPKernel:
        """A GSMP kernel whose grid is placed from ``X`` by :func:`gsmp_grid`."""
        means, bw = gsmp_grid(X, n_components, bandwidths, generator=generator, n_samples=n_samples,
                              additive=additive)
        kwargs.setdefault("ard_num_dims", X.shape[1])
        return cls(means=means, bandwidths=bw, **kwargs).to(dtype=X.dtype, device=X.device)

    def basis(self, x1, x2, diag: bool = False, last_dim_is_batch: bool = False, **params):
        mu, sd = self.means, self.bandwidths  # (*b, A, P)
        d = x1.shape[-1]
        if mu.shape[-1] == 1 and d > 1:
            mu, sd = mu.expand(*mu.shape[:-1], d), sd.expand(*sd.shape[:-1], d)
        elif mu.shape[-1] != d:
            raise ValueError(f"GSMPKernel has {mu.shape[-1]} input dimensions but x has {d}.")
        if last_dim_is_batch:
            # Column p becomes batch member p, a one-dimensional kernel with frequencies mu[:, p].
            x1, x2 = x1.mT.unsqueeze(-1), x2.mT.unsqueeze(-1)  # (..., P, n, 1)
            mu, sd = mu.mT.unsqueeze(-1), sd.mT.unsqueeze(-1)  # (*b, P, A, 1)
            d = 1
        if diag:
            shape = torch.broadcast_shapes(x1.shape[:-2], mu.shape[:-2])
            return torch.ones(*shape, mu.shape[-2], x1.shape[-2], dtype=x1.dtype, device=x1.device)
        tau = x1.unsqueeze(-2) - x2.unsqueeze(-3)  # (..., n, m, d)
        env = (tau**2) @ (sd**2).transpose(-1, -2).unsqueeze(-3)  # (..., n, m, A)
        out = torch.exp(-2.0 * math.pi**2 * env)
        for p in range(d):
            freq = mu[..., p].unsqueeze(-2).unsqueeze(-2)  # (*b, 1, 1, A)
            out = out * torch.cos(2.0 * math.pi * tau[..., p].unsqueeze(-1) * freq)
        return out.movedim(-1, -3)  # (..., A, n, m)


register_formula(GSMPKernel, lambda kernel, d: SpectralSumFormula(kernel))
