"""Wide *finite* torch networks built from a gpkern NNGP layer list: the Monte Carlo oracle.

Plain torch, independent of the kernel recursions: every layer is the finite layer it stands
for, in the NTK parameterisation (standard normal weights W, b; output
``W_std / sqrt(fan_in) * W @ h + b_std * b``). ``D`` independent networks are evaluated at once
(weights carry a leading draw axis).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from gpkern.kernels.nngp import (
    ABRelu,
    AvgPool,
    Conv,
    Dense,
    Elementwise,
    Erf,
    FanInSum,
    FanOut,
    Flatten,
    Gelu,
    GlobalAvgPool,
    LayerNorm,
)
from gpkern.kernels.nngp.architecture import Parallel, Serial
from gpkern.kernels.nngp.conv import conv_output_size


class FiniteNet:
    """``D`` random finite networks of the given width following ``arch``'s layer list."""

    def __init__(self, arch: Serial, x: torch.Tensor, width: int, draws: int, gen: torch.Generator):
        self.arch, self.width, self.D = arch, width, draws
        self.params: list[torch.Tensor] = []
        self._gen = gen
        last = arch.parametric_layers()[-1]
        self._last = last
        self._shapes = {}
        # one pass to create parameters with the right fan-ins
        self._build = True
        self._run(arch, x.expand(draws, *x.shape), stop_before_last=False)
        self._build = False

    def _new(self, *shape) -> torch.Tensor:
        p = torch.randn(self.D, *shape, generator=self._gen, dtype=torch.float64)
        self.params.append(p)
        return p

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Inputs of the final Dense layer, (D, n, m)."""
        self._i = 0
        return self._run(self.arch, x.expand(self.D, *x.shape), stop_before_last=True)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # (n, ...) -> (D, n)
        self._i = 0
        return self._run(self.arch, x.expand(self.D, *x.shape), stop_before_last=False)[..., 0]

    def last_layer(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.params[-2], self.params[-1]

    # -- layers -----------------------------------------------------------------------------
    def _param(self, *shape) -> torch.Tensor:
        if self._build:
            return self._new(*shape)
        p = self.params[self._i]
        self._i += 1
        return p

    def _run(self, layer, h, stop_before_last: bool):
        if isinstance(layer, Serial):
            for sub in layer.layers:
                if stop_before_last and sub is self._last:
                    return h
                h = self._run(sub, h, stop_before_last)
            return h
        if isinstance(layer, Parallel):
            return tuple(self._run(sub, hi, stop_before_last) for sub, hi in zip(layer.layers, h))
        if isinstance(layer, FanOut):
            return (h,) * layer.n
        if isinstance(layer, FanInSum):
            return sum(h[1:], h[0])
        if isinstance(layer, Dense):
            out = 1 if layer is self._last else self.width
            if h.dim() == 3:  # (D, n, d)
                W, b = self._param(h.shape[-1], out), self._param(1, out)
                return layer.W_std / math.sqrt(h.shape[-1]) * h @ W + layer.b_std * b
            C = h.shape[2]  # (D, n, C, H, W): acts on channels
            W, b = self._param(C, out), self._param(1, out)
            z = torch.einsum("dnchw,dco->dnohw", h, W) * (layer.W_std / math.sqrt(C))
            return z + layer.b_std * b[:, 0, None, :, None, None]
        if isinstance(layer, Conv):
            D, n, C, H, Wd = h.shape
            (kh, kw), (sh, sw) = layer.kernel_size, layer.stride
            W, b = self._param(self.width, C, kh, kw), self._param(self.width)
            _, lh, hh = conv_output_size(H, kh, sh, layer.padding)
            _, lw, hw = conv_output_size(Wd, kw, sw, layer.padding)
            xin = F.pad(h, (lw, hw, lh, hh))
            oh, ow = (H + lh + hh - kh) // sh + 1, (Wd + lw + hw - kw) // sw + 1
            z = 0
            for dh in range(kh):
                for dw in range(kw):
                    patch = xin[..., dh : dh + sh * (oh - 1) + 1 : sh, dw : dw + sw * (ow - 1) + 1 : sw]
                    z = z + torch.einsum("dnchw,doc->dnohw", patch, W[..., dh, dw])
            return layer.W_std / math.sqrt(C * kh * kw) * z + layer.b_std * b[:, None, :, None, None]
        if isinstance(layer, AvgPool):
            D, n = h.shape[:2]
            (kh, kw), (sh, sw) = layer.window, layer.stride
            _, lh, hh = conv_output_size(h.shape[3], kh, sh, layer.padding)
            _, lw, hw = conv_output_size(h.shape[4], kw, sw, layer.padding)
            flat = F.pad(h.reshape(D * n, *h.shape[2:]), (lw, hw, lh, hh))
            z = F.avg_pool2d(flat, (kh, kw), (sh, sw))
            return z.reshape(D, n, *z.shape[1:])
        if isinstance(layer, GlobalAvgPool):
            return h.mean((-2, -1))
        if isinstance(layer, Flatten):
            return h.reshape(*h.shape[:2], -1)
        if isinstance(layer, LayerNorm):
            axes = (2,) if layer.axis == "channel" else tuple(range(2, h.dim()))
            if h.dim() == 3:
                axes = (2,)
            mu = h.mean(axes, keepdim=True)
            var = ((h - mu) ** 2).mean(axes, keepdim=True)
            return (h - mu) / torch.sqrt(var + layer.eps)
        if isinstance(layer, ABRelu):
            return torch.where(h > 0, layer.b * h, layer.a * h)
        if isinstance(layer, Erf):
            return layer.a * torch.erf(layer.b * h) + layer.c
        if isinstance(layer, Gelu):
            return h * 0.5 * (1 + torch.erf(h / math.sqrt(2)))
        if isinstance(layer, Elementwise):
            return layer.fn(h)
        raise TypeError(f"no finite version of {layer!r}")


def empirical_nngp(arch, x, width, draws, gen, chunk=64):
    """Per-draw NNGP given the last hidden layer: W^2 h.h'/m + b^2 (its mean is the NNGP).

    Returns (mean (n, n), standard error (n, n)).
    """
    last = arch.parametric_layers()[-1]
    samples = []
    done = 0
    while done < draws:
        d = min(chunk, draws - done)
        net = FiniteNet(arch, x, width, d, gen)
        with torch.no_grad():
            h = net.features(x)  # (d, n, m)
        samples.append(last.W_std**2 * h @ h.transpose(1, 2) / h.shape[-1] + last.b_std**2)
        done += d
    S = torch.cat(samples)
    return S.mean(0), S.std(0) / math.sqrt(S.shape[0])


def empirical_ntk(arch, x, width, draws, gen, chunk=4):
    """Per-draw NTK: Jacobian inner products over all parameters. Returns (mean, std error)."""
    samples = []
    done = 0
    n = x.shape[0]
    while done < draws:
        d = min(chunk, draws - done)
        net = FiniteNet(arch, x, width, d, gen)
        for p in net.params:
            p.requires_grad_(True)
        f = net(x)  # (d, n)
        grads = []
        for i in range(n):
            g = torch.autograd.grad(f[:, i].sum(), net.params, retain_graph=i < n - 1)
            grads.append(torch.cat([gi.reshape(d, -1) for gi in g], dim=1))  # (d, P)
        G = torch.stack(grads, dim=1)  # (d, n, P)
        samples.append(G @ G.transpose(1, 2))
        done += d
    S = torch.cat(samples)
    return S.mean(0), S.std(0) / math.sqrt(S.shape[0])
