"""The optimisation loop shared by every gpkern model: L-BFGS or Adam with a progress bar."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable

import gpytorch
import torch
from tqdm.auto import tqdm

__all__ = ["minimize", "minimize_with_restarts", "perturb_hyperparameters"]


def minimize(
    loss_fn: Callable[[], torch.Tensor],
    params: Iterable[torch.nn.Parameter],
    *,
    optimizer: str = "lbfgs",
    max_iter: int = 100,
    lr: float | None = None,
    tol: float = 1e-9,
    verbose: bool = False,
    desc: str = "fit",
    callback: Callable[[int, float], None] | None = None,
) -> float:
    r"""Minimise a scalar loss over ``params`` in place.

    Parameters
    ----------
    loss_fn : callable
        Closure with no arguments returning the scalar loss (a graph-connected tensor).
    params : iterable of torch.nn.Parameter
        Parameters updated in place.
    optimizer : {"lbfgs", "adam"}, default="lbfgs"
        ``"lbfgs"`` uses :class:`torch.optim.LBFGS` with a strong-Wolfe line search, where
        ``max_iter`` counts L-BFGS iterations; ``"adam"`` uses :class:`torch.optim.Adam`
        with ``max_iter`` steps.
    max_iter : int, default=100
        Iteration budget.
    lr : float, optional
        Learning rate; defaults to 1.0 for L-BFGS and 0.05 for Adam.
    tol : float, default=1e-9
        L-BFGS tolerance on the change of the loss and on the gradient.
    verbose : bool, default=False
        Show a ``tqdm`` progress bar with the current loss.
    desc : str, default="fit"
        Label of the progress bar.
    callback : callable, optional
        Called as ``callback(iteration, loss)`` after each loss evaluation (L-BFGS) or step (Adam).

    Returns
    -------
    loss : float
        The best loss seen; ``params`` hold the values that achieved it.

    Examples
    --------
    >>> import torch
    >>> from gpkern.models.training import minimize
    >>> x = torch.nn.Parameter(torch.tensor([3.0], dtype=torch.float64))
    >>> round(minimize(lambda: ((x - 1.0) ** 2).sum(), [x]), 6)
    0.0
    """
    params = [p for p in params if p.requires_grad]
    if optimizer not in ("lbfgs", "adam"):
        raise ValueError(f"optimizer must be 'lbfgs' or 'adam', got {optimizer!r}.")
    if max_iter < 0:
        raise ValueError(f"max_iter must be >= 0, got {max_iter}.")
    if not params or max_iter == 0:
        with torch.no_grad():
            return float(loss_fn())

    best = {"loss": math.inf, "state": [p.detach().clone() for p in params]}
    bar = tqdm(total=max_iter, desc=desc, disable=not verbose, leave=False)
    count = {"n": 0}

    def record(loss: torch.Tensor) -> None:
        value = float(loss.detach())
        if math.isfinite(value) and value < best["loss"]:
            best["loss"] = value
            best["state"] = [p.detach().clone() for p in params]
        count["n"] += 1
        bar.set_postfix(loss=f"{value:.5g}")
        if callback is not None:
            callback(count["n"], value)

    try:
        if optimizer == "lbfgs":
            opt = torch.optim.LBFGS(
                params,
                lr=1.0 if lr is None else lr,
                max_iter=max_iter,
                max_eval=int(max_iter * 1.5) + 1,
                tolerance_grad=tol,
                tolerance_change=tol,
                history_size=20,
                line_search_fn="strong_wolfe",
            )

            def closure() -> torch.Tensor:
                opt.zero_grad()
                loss = loss_fn()
                if not torch.isfinite(loss):
                    # A non-finite trial point: report a large loss so the line search backs off.
                    return loss.detach().new_tensor(1e30).requires_grad_()
                loss.backward()
                record(loss)
                bar.update(1) if bar.n < max_iter else None
                return loss

            opt.step(closure)
        else:
            opt = torch.optim.Adam(params, lr=0.05 if lr is None else lr)
            for _ in range(max_iter):
                opt.zero_grad()
                loss = loss_fn()
                if not torch.isfinite(loss):
                    break
                loss.backward()
                record(loss)
                opt.step()
                bar.update(1)
            with torch.no_grad():
                record(loss_fn())
    finally:
        bar.close()
    with torch.no_grad():
        for p, s in zip(params, best["state"]):
            p.copy_(s)
    return best["loss"]


def perturb_hyperparameters(model: torch.nn.Module, generator: torch.Generator, scale: float = 1.5) -> None:
    r"""Random restart point: move every trainable parameter of ``model`` in place.

    A positive (GPyTorch ``GreaterThan``/``Positive``-constrained) hyperparameter :math:`v` with
    lower bound :math:`l` becomes :math:`l + (v - l) e^{z}`, :math:`z \sim \mathcal{N}(0,
    \text{scale}^2)`, so a length-scale explores much shorter and much longer scales; any other
    raw value is shifted by :math:`z`. Constraints are found through GPyTorch's
    ``named_parameters_and_constraints`` and, for plain torch modules, an attribute
    ``<name>_constraint`` next to a parameter ``raw_<name>``.
    """
    constraints = {}
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        if isinstance(module, gpytorch.Module):
            for name, _, constraint in module.named_parameters_and_constraints():
                constraints.setdefault(prefix + name, constraint)
        for name, _ in module.named_parameters(recurse=False):
            attr = getattr(module, f"{name.removeprefix('raw_')}_constraint", None)
            if attr is not None:
                constraints.setdefault(prefix + name, attr)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            z = scale * torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device)
            c = constraints.get(name)
            if isinstance(c, gpytorch.constraints.GreaterThan):  # Positive included
                lower = float(c.lower_bound)
                value = c.transform(p)
                p.copy_(c.inverse_transform(lower + (value - lower).clamp_min(1e-12) * z.exp()))
            else:
                p.add_(z)


def minimize_with_restarts(
    loss_fn: Callable[[], torch.Tensor],
    model: torch.nn.Module,
    *,
    n_restarts: int,
    generator: torch.Generator,
    optimizer: str = "lbfgs",
    max_iter: int = 100,
    verbose: bool = False,
    desc: str = "fit",
) -> tuple[float, int]:
    """:func:`minimize` from the current parameters and from ``n_restarts`` perturbed copies.

    Each restart starts from the initial state moved by :func:`perturb_hyperparameters`; the
    model ends with the parameters of the best run.

    Returns
    -------
    best_loss : float
        The lowest loss over all starts.
    n_iter : int
        Iteration budget used, ``max_iter * (n_restarts + 1)``.
    """
    start = copy.deepcopy(model.state_dict())
    best_loss, best_state = math.inf, start
    for restart in range(n_restarts + 1):
        if restart > 0:
            model.load_state_dict(start)
            perturb_hyperparameters(model, generator)
        value = minimize(
            loss_fn,
            model.parameters(),
            optimizer=optimizer,
            max_iter=max_iter,
            verbose=verbose,
            desc=f"{desc} {restart + 1}/{n_restarts + 1}",
        )
        if value < best_loss:
            best_loss, best_state = value, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    return best_loss, max_iter * (n_restarts + 1)
