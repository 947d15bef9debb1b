r"""Scalable neural network kernel (SNNK) layers (Sehanobish, Choromanski et al., ICLR 2024).

A feedforward layer :math:`y_j = f(w_j^\top x + b_j)` entangles inputs and weights inside
:math:`f`. An SNNK layer disentangles them with random features,

.. math::

    y_j = \phi(x')^\top \psi(w'_j), \qquad x' = [x, 1],\; w'_j = [w_j, b_j],

where :math:`\phi` depends on the input only and :math:`\psi` on the weights only, with
:math:`\mathbb{E}[\phi(x')^\top\psi(w'_j)] = f(w_j^\top x + b_j)` for activations with a
universal-random-feature representation (``"cos"``, ``"sin"``, ``"gaussian"``, ``"sinc"``,
``"exp"``; see :mod:`gpkern.kernels.random_features`). For ``"relu"`` the paper's ReLU-SNNK uses
arc-cosine features on both sides, so the layer estimates the arc-cosine neural network kernel

.. math::

    y_j = k_1(x', w'_j) = \tfrac{1}{\pi}\lVert x'\rVert \lVert w'_j\rVert
        \big(\sin\theta_j + (\pi - \theta_j)\cos\theta_j\big)
        = 2\,\mathbb{E}_g\big[\mathrm{relu}(g^\top x')\,\mathrm{relu}(g^\top w'_j)\big],

a ReLU-like response of :math:`x` to the neuron :math:`w'_j` (not :math:`\mathrm{relu}(w_j^\top x + b_j)`
itself, which has no such representation).
"""

from __future__ import annotations

import math
import numbers

import torch

from gpkern.kernels.nngp.duals import arccos_kernel
from gpkern.kernels.random_features import (
    arccos_features,
    check_n_features,
    check_urf_activation,
    sample_urf,
    universal_features,
)

__all__ = ["SNNKLayer"]


class SNNKLayer(torch.nn.Module):
    r"""Drop-in replacement for ``Linear(in_features, out_features)`` followed by an activation.

    The output is :math:`Y = \Phi(X')\,\Psi(W')^\top` with :math:`\Phi` of shape
    ``(..., D)`` computed from the inputs alone and :math:`\Psi` of shape ``(out_features, D)``
    from the weights alone (:math:`D = m` for ``"relu"``, :math:`2m` for the complex URF
    features, stored as real and imaginary parts). Because the weights enter only through
    :math:`\Psi`, the layer can also be trained in *feature mode* (``trainable="features"``),
    where :math:`\Psi` itself is the parameter: ``D * out_features`` trainable numbers instead of
    ``(in_features + 1) * out_features``, fewer whenever :math:`D < d_{\mathrm{in}} + 1`.

    Parameters
    ----------
    in_features, out_features : int
        Sizes as for :class:`torch.nn.Linear`.
    activation : str, default="relu"
        ``"relu"`` (arc-cosine SNNK) or an activation of
        :data:`gpkern.kernels.random_features.URF_ACTIVATIONS`.
    n_features : int, default=256
        Number of random draws :math:`m`; the error of the estimate decays as :math:`1/\sqrt m`.
    bias : bool, default=True
        Learn a bias (appended as a constant input, :math:`x' = [x, 1]`).
    trainable : {"weights", "features"}, default="weights"
        ``"weights"``: parameters ``weight`` (out, in) and ``bias`` (out) as in ``Linear``, and
        :meth:`exact_forward` gives the layer being approximated. ``"features"``: the parameter
        is ``psi`` of shape (out, D), initialised from :math:`\Psi(W')` of a ``Linear``-style draw.
    random_state : int, default=0
        Seed of the random projections (and of the initial weights).
    device, dtype : optional
        Where to create the parameters and buffers.

    Examples
    --------
    >>> import torch
    >>> from gpkern.nn import SNNKLayer
    >>> layer = SNNKLayer(4, 3, activation="sin", n_features=512)
    >>> x = 0.3 * torch.randn(5, 4)
    >>> layer(x).shape
    torch.Size([5, 3])
    >>> bool((layer(x) - torch.sin(x @ layer.weight.T + layer.bias)).abs().max() < 0.3)
    True
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        activation: str = "relu",
        n_features: int = 256,
        bias: bool = True,
        trainable: str = "weights",
        random_state: int = 0,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        m = check_n_features(n_features)
        if activation != "relu":
            check_urf_activation(activation)
        if trainable not in ("weights", "features"):
            raise ValueError(f"trainable must be 'weights' or 'features', got {trainable!r}.")
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.activation = activation
        self.n_features = m
        self.use_bias = bool(bias)
        self.trainable = trainable
        factory = {"device": device, "dtype": dtype if dtype is not None else torch.get_default_dtype()}

        gen = torch.Generator().manual_seed(int(random_state))
        d_aug = self.in_features + int(self.use_bias)
        self.register_buffer("G", torch.randn(m, d_aug, generator=gen, dtype=torch.float64).to(**factory))
        if activation != "relu":
            c, w = sample_urf(activation, m, gen)
            # Stored as real pairs so that module.double()/.float() keep them consistent.
            self.register_buffer("c", torch.view_as_real(c).to(**factory))
            self.register_buffer("w", torch.view_as_real(w).to(**factory))

        bound = 1.0 / math.sqrt(self.in_features)  # torch.nn.Linear's default initialisation
        weight = (torch.rand(self.out_features, self.in_features, generator=gen, dtype=torch.float64) * 2 - 1) * bound
        b = (torch.rand(self.out_features, generator=gen, dtype=torch.float64) * 2 - 1) * bound
        if trainable == "weights":
            self.weight = torch.nn.Parameter(weight.to(**factory))
            self.bias = torch.nn.Parameter(b.to(**factory)) if self.use_bias else None
        else:
            w_aug = torch.cat([weight, b[:, None]], dim=1) if self.use_bias else weight
            self.psi = torch.nn.Parameter(self._weight_features(w_aug.to(**factory)).detach())

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear, activation: str = "relu", n_features: int = 256, random_state: int = 0):
        """An SNNK layer approximating ``activation(linear(x))``, with ``linear``'s weights copied."""
        layer = cls(
            linear.in_features,
            linear.out_features,
            activation=activation,
            n_features=n_features,
            bias=linear.bias is not None,
            random_state=random_state,
            device=linear.weight.device,
            dtype=linear.weight.dtype,
        )
        with torch.no_grad():
            layer.weight.copy_(linear.weight)
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        return layer

    @property
    def feature_dim(self) -> int:
        """:math:`D`: real features per input (``m`` for ReLU, ``2m`` for URF)."""
        return self.n_features if self.activation == "relu" else 2 * self.n_features

    def _augment(self, x: torch.Tensor) -> torch.Tensor:  # (..., d) -> (..., d + 1)
        if not self.use_bias:
            return x
        return torch.cat([x, torch.ones_like(x[..., :1])], dim=-1)

    def _complex(self, name: str) -> torch.Tensor:
        return torch.view_as_complex(getattr(self, name).to(torch.float64).contiguous())

    def _input_features(self, x: torch.Tensor) -> torch.Tensor:  # (..., d+1) -> (..., D)
        if self.activation == "relu":
            return arccos_features(x, self.G, 1)
        z = universal_features(x, self.G, self._complex("c"), self._complex("w"))
        return torch.cat([z.real, z.imag], dim=-1)

    def _weight_features(self, w_aug: torch.Tensor) -> torch.Tensor:  # (out, d+1) -> (out, D)
        if self.activation == "relu":
            return arccos_features(w_aug, self.G, 1)
        z = universal_features(w_aug, self.G, self._complex("c"), self._complex("w"))
        # Re(z_x^T z_w) = re_x re_w - im_x im_w: fold the sign into the weight side.
        return torch.cat([z.real, -z.imag], dim=-1)

    def _weights_augmented(self) -> torch.Tensor:  # (out, d+1)
        if self.use_bias:
            return torch.cat([self.weight, self.bias[:, None]], dim=1)
        return self.weight

    def weight_features(self) -> torch.Tensor:  # (out, D)
        r""":math:`\Psi(W')`, the weight side of the layer."""
        if self.trainable == "features":
            return self.psi
        return self._weight_features(self._weights_augmented())

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        if x.shape[-1] != self.in_features:
            raise ValueError(f"expected inputs with {self.in_features} features in the last axis, got shape {tuple(x.shape)}.")
        return self._input_features(self._augment(x)) @ self.weight_features().mT

    def exact_forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        r"""The layer the SNNK estimates: :math:`f(Wx + b)`, or :math:`k_1(x', w'_j)` for ReLU.

        Only in ``trainable="weights"`` mode (feature mode has no weight matrix).
        """
        if self.trainable != "weights":
            raise ValueError("exact_forward needs trainable='weights'; feature mode learns psi directly.")
        xa = self._augment(x)
        wa = self._weights_augmented()
        if self.activation == "relu":
            gx, gw = (xa * xa).sum(-1, keepdim=True), (wa * wa).sum(-1)
            return arccos_kernel(gx, xa @ wa.mT, gw, order=1)
        z = xa @ wa.mT
        return {
            "cos": torch.cos,
            "sin": torch.sin,
            "gaussian": lambda t: torch.exp(-0.5 * t * t),
            "sinc": torch.sinc,
            "exp": torch.exp,
        }[self.activation](z)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, activation={self.activation!r}, "
            f"n_features={self.n_features}, bias={self.use_bias}, trainable={self.trainable!r}"
        )
