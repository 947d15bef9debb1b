"""The optimisation loop shared by every gpkern model: L-BFGS or Adam with a progress bar,
and the warnings it owes its caller (budget reached, a hyperparameter at a bound)."""

from __future__ import annotations

import copy
import math
import statistics
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import gpytorch
import torch
from sklearn.exceptions import ConvergenceWarning
from tqdm.auto import tqdm

__all__ = [
    "BoundHit",
    "OptimizeResult",
    "minimize",
    "minimize_with_restarts",
    "optimize",
    "parameters_at_bounds",
    "perturb_hyperparameters",
    "warn_at_bounds",
    "warn_if_unconverged",
]

#: A fitted value within this relative distance of a finite, non-zero bound is "at" the bound.
BOUND_RTOL = 1e-2


@dataclass(frozen=True)
class OptimizeResult:
    """What an optimisation run did.

    Attributes
    ----------
    loss : float
        The best loss seen; the parameters hold the values that achieved it.
    n_iter : int
        Iterations run (L-BFGS iterations or Adam steps), summed over starts for
        :func:`minimize_with_restarts`.
    converged : bool
        Whether the run stopped by its tolerance rather than at its budget (for
        :func:`minimize_with_restarts`: the run that gave the best loss).
    """

    loss: float
    n_iter: int
    converged: bool


class _Stalled(Exception):
    """Raised inside an L-BFGS closure to end the run by ``min_improvement``."""


def _adam_converged(losses: list[float], tol: float) -> bool:
    r"""Whether the last Adam steps no longer decrease the loss detectably.

    With :math:`w = \max(10, \lfloor T / 10 \rfloor)` of :math:`T` losses, the mean of the
    last :math:`w` is compared with the mean of the :math:`w` before: the run has converged when
    the decrease is below three standard errors of that difference (minibatch noise) or below
    ``max(tol, 1e-4)`` relative to the loss. Fewer than :math:`2w` steps cannot tell: not converged.
    """
    w = max(10, len(losses) // 10)
    if len(losses) < 2 * w:
        return False
    before, last = losses[-2 * w : -w], losses[-w:]
    decrease = statistics.fmean(before) - statistics.fmean(last)
    se = math.sqrt((statistics.pvariance(before) + statistics.pvariance(last)) / w)
    rel = max(tol, 1e-4)  # scikit-learn's MLP stops Adam at a 1e-4 improvement
    return decrease <= max(3.0 * se, rel * max(1.0, abs(statistics.fmean(last))))


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
    r"""Minimise a scalar loss over ``params`` in place; the best loss (see :func:`optimize`).

    Examples
    --------
    >>> import torch
    >>> from gpkern.models.training import minimize
    >>> x = torch.nn.Parameter(torch.tensor([3.0], dtype=torch.float64))
    >>> round(minimize(lambda: ((x - 1.0) ** 2).sum(), [x]), 6)
    0.0
    """
    return optimize(
        loss_fn, params, optimizer=optimizer, max_iter=max_iter, lr=lr, tol=tol,
        verbose=verbose, desc=desc, callback=callback,
    ).loss


def optimize(
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
    min_improvement: float | None = None,
    n_iter_no_change: int = 10,
) -> OptimizeResult:
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
        L-BFGS tolerance on the change of the loss and on the gradient; for Adam, the relative
        decrease of the mean loss over the last steps (at least 1e-4) below which the run has
        converged.
    verbose : bool, default=False
        Show a ``tqdm`` progress bar with the current loss.
    desc : str, default="fit"
        Label of the progress bar.
    callback : callable, optional
        Called as ``callback(iteration, loss)`` after each loss evaluation (L-BFGS) or step (Adam).
    min_improvement : float, optional
        L-BFGS only: also stop, as converged, once ``n_iter_no_change`` consecutive evaluations
        have each failed to lower the best loss by more than ``min_improvement`` (scikit-learn's
        MLP rule); for objectives known only to that precision, such as Monte Carlo estimates.
    n_iter_no_change : int, default=10
        Patience of ``min_improvement``.

    Returns
    -------
    OptimizeResult
        The best loss seen (``params`` hold the values that achieved it), the iterations run,
        and whether the run stopped by its tolerance. L-BFGS has converged when it stopped
        before ``max_iter`` iterations and its evaluation budget; Adam, which has no stopping
        rule, when the loss stopped decreasing over its last steps (see ``tol``).

    Examples
    --------
    >>> import torch
    >>> from gpkern.models.training import optimize
    >>> x = torch.nn.Parameter(torch.tensor([3.0], dtype=torch.float64))
    >>> res = optimize(lambda: ((x - 1.0) ** 2).sum(), [x])
    >>> round(res.loss, 6), res.converged
    (0.0, True)
    """
    params = [p for p in params if p.requires_grad]
    if optimizer not in ("lbfgs", "adam"):
        raise ValueError(f"optimizer must be 'lbfgs' or 'adam', got {optimizer!r}.")
    if max_iter < 0:
        raise ValueError(f"max_iter must be >= 0, got {max_iter}.")
    if not params or max_iter == 0:  # nothing to optimise, or no optimisation asked for
        with torch.no_grad():
            return OptimizeResult(float(loss_fn()), 0, True)

    best = {"loss": math.inf, "state": [p.detach().clone() for p in params]}
    bar = tqdm(total=max_iter, desc=desc, disable=not verbose, leave=False)
    count = {"n": 0, "no_change": 0}
    losses: list[float] = []

    def record(loss: torch.Tensor) -> None:
        value = float(loss.detach())
        if min_improvement is not None:
            improved = not math.isfinite(best["loss"]) or value < best["loss"] - min_improvement
            count["no_change"] = 0 if improved else count["no_change"] + 1
        if math.isfinite(value) and value < best["loss"]:
            best["loss"] = value
            best["state"] = [p.detach().clone() for p in params]
        count["n"] += 1
        losses.append(value)
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
                if count["no_change"] >= n_iter_no_change:
                    raise _Stalled
                return loss

            try:
                opt.step(closure)
                stalled = False
            except _Stalled:
                stalled = True
            # L-BFGS stops by its tolerances, or by max_iter iterations or max_eval evaluations.
            lbfgs_state = opt.state[opt.param_groups[0]["params"][0]]
            n_iter = int(lbfgs_state.get("n_iter", 0))
            evals = int(lbfgs_state.get("func_evals", 0))
            converged = stalled or (n_iter < max_iter and evals < opt.defaults["max_eval"])
        else:
            opt = torch.optim.Adam(params, lr=0.05 if lr is None else lr)
            n_iter = 0
            for _ in range(max_iter):
                opt.zero_grad()
                loss = loss_fn()
                if not torch.isfinite(loss):
                    break
                loss.backward()
                record(loss)
                opt.step()
                n_iter += 1
                bar.update(1)
            converged = _adam_converged(losses, tol)
            with torch.no_grad():
                record(loss_fn())
    finally:
        bar.close()
    with torch.no_grad():
        for p, s in zip(params, best["state"]):
            p.copy_(s)
    return OptimizeResult(best["loss"], n_iter, converged)


def _constraints(model: torch.nn.Module) -> dict[str, gpytorch.constraints.Interval]:
    """Each constrained parameter's GPyTorch constraint, by its name in ``model``.

    Found through GPyTorch's ``named_parameters_and_constraints`` and, for plain torch modules,
    an attribute ``<name>_constraint`` next to a parameter ``raw_<name>``.
    """
    constraints = {}
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        if isinstance(module, gpytorch.Module):
            for name, _, constraint in module.named_parameters_and_constraints():
                if constraint is not None:
                    constraints.setdefault(prefix + name, constraint)
        for name, _ in module.named_parameters(recurse=False):
            attr = getattr(module, f"{name.removeprefix('raw_')}_constraint", None)
            if isinstance(attr, gpytorch.constraints.Interval):
                constraints.setdefault(prefix + name, attr)
    return constraints


def perturb_hyperparameters(model: torch.nn.Module, generator: torch.Generator, scale: float = 1.5) -> None:
    r"""Random restart point: move every trainable parameter of ``model`` in place.

    A positive (GPyTorch ``GreaterThan``/``Positive``-constrained) hyperparameter :math:`v` with
    lower bound :math:`l` becomes :math:`l + (v - l) e^{z}`, :math:`z \sim \mathcal{N}(0,
    \text{scale}^2)`, so a length-scale explores much shorter and much longer scales; any other
    raw value is shifted by :math:`z`. Constraints are found through GPyTorch's
    ``named_parameters_and_constraints`` and, for plain torch modules, an attribute
    ``<name>_constraint`` next to a parameter ``raw_<name>``.
    """
    constraints = _constraints(model)
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
) -> OptimizeResult:
    """:func:`optimize` from the current parameters and from ``n_restarts`` perturbed copies.

    Each restart starts from the initial state moved by :func:`perturb_hyperparameters`; the
    model ends with the parameters of the best run.

    Returns
    -------
    OptimizeResult
        The lowest loss over all starts, the iterations summed over starts, and whether the
        best start converged.
    """
    start = copy.deepcopy(model.state_dict())
    best, best_state, n_iter = None, start, 0
    for restart in range(n_restarts + 1):
        if restart > 0:
            model.load_state_dict(start)
            perturb_hyperparameters(model, generator)
        res = optimize(
            loss_fn,
            model.parameters(),
            optimizer=optimizer,
            max_iter=max_iter,
            verbose=verbose,
            desc=f"{desc} {restart + 1}/{n_restarts + 1}",
        )
        n_iter += res.n_iter
        if best is None or res.loss < best.loss:
            best, best_state = res, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    return OptimizeResult(best.loss, n_iter, best.converged)


def warn_if_unconverged(
    result: OptimizeResult,
    owner: str,
    max_iter: int,
    *,
    optimizer: str = "lbfgs",
    budget: str = "max_iter",
    stacklevel: int = 3,
) -> None:
    """A :class:`~sklearn.exceptions.ConvergenceWarning` when ``result`` stopped at its budget.

    ``owner`` names the estimator (and stage) in the message, ``budget`` the parameter that
    holds ``max_iter``.
    """
    if result.converged:
        return
    warnings.warn(
        f"{owner}: the {optimizer} optimiser stopped at its budget ({budget}={max_iter}) "
        "before meeting its tolerance, so the fitted hyperparameters may not be optimal. "
        f"Increase {budget}, or standardise the inputs and targets so that the problem is "
        "better conditioned.",
        ConvergenceWarning,
        stacklevel=stacklevel,
    )


@dataclass(frozen=True)
class BoundHit:
    """A fitted hyperparameter at one of its bounds.

    Attributes
    ----------
    name : str
        The parameter's name in the model, without GPyTorch's ``raw_`` prefix.
    index : int or None
        The entry of a vector parameter (an ARD length-scale's dimension), else ``None``.
    value, bound : float
        The fitted value and the bound it sits at.
    side : {"lower", "upper"}
    """

    name: str
    index: int | None
    value: float
    bound: float
    side: str


def parameters_at_bounds(model: torch.nn.Module, rtol: float = BOUND_RTOL) -> list[BoundHit]:
    r"""The trainable constrained hyperparameters of ``model`` that sit at a bound.

    A value :math:`v` is at a finite, non-zero bound :math:`b` when
    :math:`|v - b| \le \text{rtol}\,|b|`. Bounds at 0 or :math:`\pm\infty` only encode a
    sign (GPyTorch's ``Positive``), not a limit someone chose, and are not reported.
    """
    hits = []
    params = dict(model.named_parameters())
    for name, constraint in _constraints(model).items():
        p = params.get(name)
        if p is None or not p.requires_grad:
            continue
        with torch.no_grad():
            value = constraint.transform(p).reshape(-1).cpu()
        label = name.replace("raw_", "")
        for side in ("lower", "upper"):
            bound = getattr(constraint, f"{side}_bound").reshape(-1).cpu()
            bound = bound.expand_as(value) if bound.numel() == 1 else bound
            for i, (v, b) in enumerate(zip(value.tolist(), bound.tolist())):
                if b != 0 and math.isfinite(b) and abs(v - b) <= rtol * abs(b):
                    hits.append(BoundHit(label, i if value.numel() > 1 else None, v, b, side))
    return hits


def warn_at_bounds(
    hits: Iterable[BoundHit], owner: str, hints: Mapping[str, str] | None = None, *, stacklevel: int = 3
) -> None:
    """One :class:`~sklearn.exceptions.ConvergenceWarning` per hyperparameter at a bound.

    ``hints`` maps a parameter name's last component (``"noise"``, ``"lengthscale"``) to the
    advice ending the message; the default advises changing the bound or rescaling the data.
    """
    hints = hints or {}
    for hit in hits:
        entry = hit.name if hit.index is None else f"{hit.name}[{hit.index}]"
        advice = hints.get(hit.name.rsplit(".", 1)[-1]) or (
            "Change the bound (the parameter's constraint) or rescale the data, and fit again."
        )
        warnings.warn(
            f"{owner}: the fitted {entry} = {hit.value:.6g} is at its {hit.side} bound "
            f"{hit.bound:.6g}; the optimum may lie beyond it. {advice}",
            ConvergenceWarning,
            stacklevel=stacklevel,
        )
