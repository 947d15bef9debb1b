r"""Random-feature kernels: Monte Carlo feature maps whose Gram matrix estimates a kernel.

Every kind draws :math:`m` Gaussian directions :math:`g_i \sim \mathcal{N}(0, I_d)` once (from
``random_state``) and maps an input :math:`x` (divided by the length-scale) to a feature vector
:math:`\phi(x)` such that :math:`\mathbb{E}[\phi(x)^\top \phi(y)] = k(x, y)`; the estimate's error
decays as :math:`1/\sqrt{m}`.

- ``"rbf"``: :math:`k = \exp(-\lVert x-y\rVert^2/2)`, random Fourier features
  :math:`[\cos Gx, \sin Gx]/\sqrt{m}` (Rahimi and Recht).
- ``"arccos0"``: :math:`k = 1 - \theta/\pi` (:math:`\theta` the angle between x and y),
  features :math:`\sqrt{2/m}\,\Theta(Gx)` (Cho and Saul, order 0).
- ``"arccos1"``: :math:`k = \tfrac1\pi\lVert x\rVert\lVert y\rVert(\sin\theta + (\pi-\theta)\cos\theta)`,
  features :math:`\sqrt{2/m}\,\max(Gx, 0)` (order 1).
- ``"softmax"``: :math:`k = \exp(x^\top y)`, positive random features
  :math:`\exp(Gx - \lVert x\rVert^2/2)/\sqrt{m}`.
- ``"urf"``: :math:`k = f(x^\top y)` by universal random features (below).

Universal random features (Sehanobish, Choromanski et al., ICLR 2024) estimate
:math:`f(x^\top y)` for an activation with a Fourier-type representation
:math:`f(z) = \mathbb{E}_{\xi \sim p}[\,w(\xi)\, e^{c(\xi) z}]` (:math:`c = 2\pi i \xi` for
:math:`f(z) = \int \tau(\xi) e^{2\pi i \xi z} d\xi`, :math:`w = \tau/p`). With
:math:`a = b = \sqrt{c}`, the Gaussian identity
:math:`\mathbb{E}_g[e^{a g^\top x + b g^\top y}] = e^{(a^2\lVert x\rVert^2 + b^2\lVert y\rVert^2)/2 + ab\,x^\top y}`
gives the (complex) features

.. math::

    \phi_i(x) = \frac{\sqrt{w(\xi_i)}}{\sqrt m}
        \exp\!\big(a(\xi_i) g_i^\top x - a(\xi_i)^2 \lVert x\rVert^2 / 2\big), \qquad
    \mathbb{E}\big[\textstyle\sum_i \phi_i(x)\phi_i(y)\big] = f(x^\top y).

The estimate is :math:`\operatorname{Re}\sum_i \phi_i(x)\phi_i(y)`. The same machinery builds
:class:`gpkern.nn.SNNKLayer`, where :math:`y` is a weight vector.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import gpytorch
import torch
from linear_operator.operators import LowRankRootLinearOperator

__all__ = [
    "RandomFeatureKernel",
    "URF_ACTIVATIONS",
    "fourier_features",
    "arccos_features",
    "positive_features",
    "universal_features",
    "sample_urf",
]

KINDS = ("rbf", "arccos0", "arccos1", "softmax", "urf")


# -- feature maps (functions of the draws, shared with gpkern.nn) -------------------------------
def fourier_features(x: torch.Tensor, G: torch.Tensor) -> torch.Tensor:  # (..., d), (m, d) -> (..., 2m)
    r"""Random Fourier features :math:`[\cos Gx, \sin Gx]/\sqrt{m}` of the unit RBF kernel."""
    proj = x @ G.mT
    return torch.cat([proj.cos(), proj.sin()], dim=-1) / math.sqrt(G.shape[0])


def arccos_features(x: torch.Tensor, G: torch.Tensor, order: int) -> torch.Tensor:  # (..., d) -> (..., m)
    r"""Arc-cosine features :math:`\sqrt{2/m}\,\Theta(Gx)(Gx)^{n}` of Cho and Saul's kernel of order n."""
    proj = x @ G.mT
    step = (proj > 0).to(proj.dtype)
    feats = step if order == 0 else step * proj
    return feats * math.sqrt(2.0 / G.shape[0])


def positive_features(x: torch.Tensor, G: torch.Tensor) -> torch.Tensor:  # (..., d) -> (..., m)
    r"""Positive random features :math:`\exp(Gx - \lVert x\rVert^2/2)/\sqrt{m}` of :math:`e^{x^\top y}`."""
    proj = x @ G.mT - 0.5 * (x * x).sum(-1, keepdim=True)
    return (proj - 0.5 * math.log(G.shape[0])).exp()


def universal_features(
    x: torch.Tensor,  # (..., d)
    G: torch.Tensor,  # (m, d)
    c: torch.Tensor,  # (m,) complex
    w: torch.Tensor,  # (m,) complex
) -> torch.Tensor:  # (..., m) complex
    r"""Complex universal random features :math:`\sqrt{w/m}\,e^{a g^\top x - c\lVert x\rVert^2/2}`, :math:`a = \sqrt c`."""
    cdtype = torch.complex128 if x.dtype == torch.float64 else torch.complex64
    a = c.to(cdtype).sqrt()
    proj = (x @ G.mT).to(cdtype) * a - 0.5 * (x * x).sum(-1, keepdim=True).to(cdtype) * c.to(cdtype)
    return proj.exp() * (w.to(cdtype) / G.shape[0]).sqrt()


def _two_point(weight: Callable[[torch.Tensor], torch.Tensor]):
    def sample(m: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        sign = torch.randint(0, 2, (m,), generator=gen).to(torch.float64) * 2 - 1
        return 1j * sign.to(torch.complex128), weight(sign)

    return sample


def _gaussian(m: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    # tau = N(0, 1/(2 pi)^2) so that c = 2 pi i xi = i N(0, 1) and f(z) = exp(-z^2/2).
    c = 1j * torch.randn(m, generator=gen, dtype=torch.float64).to(torch.complex128)
    return c, torch.ones(m, dtype=torch.complex128)


def _sinc(m: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    # sinc(z) = sin(pi z)/(pi z) = int_{-1/2}^{1/2} exp(2 pi i xi z) d xi: xi uniform, w = 1.
    xi = torch.rand(m, generator=gen, dtype=torch.float64) - 0.5
    return (2j * math.pi * xi).to(torch.complex128), torch.ones(m, dtype=torch.complex128)


def _exp(m: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    ones = torch.ones(m, dtype=torch.complex128)
    return ones, ones.clone()


#: Activations with a known URF representation: name -> sampler ``(m, generator) -> (c, w)``
#: with :math:`f(z) = \mathbb{E}[w\,e^{cz}]`.
URF_ACTIVATIONS: dict[str, Callable[[int, torch.Generator], tuple[torch.Tensor, torch.Tensor]]] = {
    # cos z = E_s[exp(i s z)], s = +-1 (xi = +-1/(2 pi)).
    "cos": _two_point(lambda s: torch.ones_like(s, dtype=torch.complex128)),
    # sin z = E_s[-i s exp(i s z)].
    "sin": _two_point(lambda s: (-1j * s).to(torch.complex128)),
    "gaussian": _gaussian,
    "sinc": _sinc,
    "exp": _exp,
}


def check_urf_activation(activation) -> str:
    """Validate an activation name for universal random features; returns it."""
    if not isinstance(activation, str) or activation not in URF_ACTIVATIONS:
        hint = " For ReLU use the arc-cosine features (kind='arccos1')." if activation == "relu" else ""
        raise ValueError(
            f"activation {activation!r} has no known universal-random-feature (Fourier) "
            f"representation; choose one of {sorted(URF_ACTIVATIONS)}.{hint}"
        )
    return activation


def sample_urf(activation: str, m: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw :math:`(c_i, w_i)_{i \\le m}` of :data:`URF_ACTIVATIONS` ``[activation]``."""
    return URF_ACTIVATIONS[check_urf_activation(activation)](m, gen)


def check_n_features(n_features) -> int:
    if not isinstance(n_features, numbers.Integral) or isinstance(n_features, bool) or n_features <= 0:
        raise ValueError(f"n_features must be a positive integer, got {n_features!r}.")
    return int(n_features)


class RandomFeatureKernel(gpytorch.kernels.Kernel):
    r"""Kernel estimated by :math:`m` random features, :math:`\hat k(x, y) = \phi(x)^\top\phi(y)`.

    Inputs are divided by the length-scale :math:`\ell` (one per dimension with
    ``ard_num_dims``) before the feature map; see the module docstring for the table of kinds.
    Wrap in :class:`gpytorch.kernels.ScaleKernel` for an output scale. For every kind but
    ``"urf"`` the Gram matrix is :math:`\Phi\Phi^\top` with :math:`\Phi` from :meth:`features`,
    so a GP can use the :math:`O(n m^2)` Woodbury identities of :mod:`gpkern.linalg.low_rank`;
    the training covariance (``x1 is x2``, more points than features) is returned as a
    ``LowRankRootLinearOperator``, which GPyTorch models solve by Woodbury when kernels are
    evaluated eagerly (``gpytorch.settings.lazily_evaluate_kernels(False)``).

    Parameters
    ----------
    kind : {"rbf", "arccos0", "arccos1", "softmax", "urf"}, default="rbf"
        Which kernel to estimate.
    n_features : int, default=1024
        Number of random draws :math:`m` (the feature dimension is :attr:`feature_dim`).
    activation : str, optional
        For ``kind="urf"`` only: one of :data:`URF_ACTIVATIONS` (``"cos"``, ``"sin"``,
        ``"gaussian"``, ``"sinc"``, ``"exp"``); the kernel is :math:`f(x^\top y)`. Note that
        :math:`f(x^\top y)` is positive semi-definite only for some :math:`f` (``"exp"`` is; ``"sin"``
        is not), so ``"urf"`` is mainly a building block of :class:`gpkern.nn.SNNKLayer`.
    random_state : int, default=0
        Seed of the draws; the same seed gives the same features for the same input dimension.
    **kwargs
        Passed to :class:`gpytorch.kernels.Kernel` (``ard_num_dims``, ``batch_shape``,
        ``active_dims``, ``lengthscale_constraint``, ...).

    Examples
    --------
    >>> import torch
    >>> from gpkern.kernels import RandomFeatureKernel
    >>> x = torch.randn(5, 3, dtype=torch.float64)
    >>> k = RandomFeatureKernel("rbf", n_features=256, random_state=0).double()
    >>> k(x).to_dense().shape, k.features(x).shape
    (torch.Size([5, 5]), torch.Size([5, 512]))
    """

    has_lengthscale = True

    def __init__(
        self,
        kind: str = "rbf",
        n_features: int = 1024,
        activation: str | None = None,
        random_state: int = 0,
        **kwargs,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}.")
        n_features = check_n_features(n_features)
        if kind == "urf":
            check_urf_activation(activation)
        elif activation is not None:
            raise ValueError(f"activation is only used with kind='urf'; got activation={activation!r} with kind={kind!r}.")
        if not isinstance(random_state, numbers.Integral) or isinstance(random_state, bool):
            raise ValueError(f"random_state must be an int, got {random_state!r}.")
        super().__init__(**kwargs)
        self.kind = kind
        self.n_features = n_features
        self.activation = activation
        self.random_state = int(random_state)
        self._draw_cache: dict = {}
        if kind in ("arccos0", "arccos1", "softmax", "urf"):
            # Dot-product kernels: start at unit scale so that x^T y keeps the inputs' size.
            self.lengthscale = 1.0

    @property
    def feature_dim(self) -> int:
        """Number of real feature columns: :math:`2m` for ``rbf`` and ``urf``, else :math:`m`."""
        return 2 * self.n_features if self.kind in ("rbf", "urf") else self.n_features

    def draws(self, d: int, dtype: torch.dtype, device: torch.device) -> dict:
        """The random draws for input dimension ``d`` (deterministic in ``random_state``)."""
        key = (d, dtype, str(device))
        if key not in self._draw_cache:
            gen = torch.Generator().manual_seed(self.random_state)
            G = torch.randn(self.n_features, d, generator=gen, dtype=torch.float64)
            out = {"G": G.to(dtype=dtype, device=device)}
            if self.kind == "urf":
                c, w = sample_urf(self.activation, self.n_features, gen)
                out.update(c=c.to(device), w=w.to(device))
            self._draw_cache[key] = out
        return self._draw_cache[key]

    def _scaled(self, x: torch.Tensor) -> torch.Tensor:
        return x / self.lengthscale

    def _phi(self, x: torch.Tensor, scaled: bool = False) -> torch.Tensor:  # (..., n, d) -> (..., n, D)
        dr = self.draws(x.shape[-1], x.dtype, x.device)
        x = x if scaled else self._scaled(x)
        if self.kind == "rbf":
            return fourier_features(x, dr["G"])
        if self.kind == "arccos0":
            return arccos_features(x, dr["G"], 0)
        if self.kind == "arccos1":
            return arccos_features(x, dr["G"], 1)
        if self.kind == "softmax":
            return positive_features(x, dr["G"])
        z = universal_features(x, dr["G"], dr["c"], dr["w"])
        return torch.cat([z.real, z.imag], dim=-1)

    def features(self, x: torch.Tensor) -> torch.Tensor:  # (..., n, d) -> (..., n, D)
        r"""Feature matrix :math:`\Phi` with :math:`\hat K = \Phi\Phi^\top` (not for ``kind="urf"``).

        Raises
        ------
        ValueError
            For ``kind="urf"``, whose estimate :math:`\operatorname{Re}(ZZ^\top)` is not a Gram matrix.
        """
        if self.kind == "urf":
            raise ValueError(
                "kind='urf' estimates Re(Z Z^T) with complex features Z, which is not a Gram "
                "matrix Phi Phi^T; use a PSD kind ('rbf', 'arccos0', 'arccos1', 'softmax') for the "
                "Woodbury path."
            )
        return self._phi(x)

    def forward(self, x1, x2, diag: bool = False, last_dim_is_batch: bool = False, **params):
        same = x2 is x1
        x1 = self._scaled(x1)
        x2 = x1 if same else self._scaled(x2)
        if last_dim_is_batch:
            # Scaled first, so that column j keeps its own length-scale (ARD) and the kernel's
            # batch dimensions stay in front of the column dimension.
            x1 = x1.mT.unsqueeze(-1)
            x2 = x1 if same else x2.mT.unsqueeze(-1)
        f1 = self._phi(x1, scaled=True)
        f2 = f1 if same else self._phi(x2, scaled=True)
        if self.kind == "urf":
            # Re(z1 z2^T) = re1 re2^T - im1 im2^T
            half = self.n_features
            f2 = torch.cat([f2[..., :half], -f2[..., half:]], dim=-1)
        if diag:
            return (f1 * f2).sum(-1)
        if f2 is f1 and f1.shape[-1] < f1.shape[-2]:
            # Lets GPyTorch models add the noise as LowRankRootAddedDiag and solve by Woodbury.
            return LowRankRootLinearOperator(f1)
        return f1 @ f2.mT
