"""The random source of every sampler: a :class:`torch.Generator` from a generator or a seed."""

from __future__ import annotations

import numbers

import numpy as np
import torch

__all__ = ["as_generator"]


def as_generator(
    generator: torch.Generator | int | np.random.RandomState | None,
    device: torch.device | str | None = None,
) -> torch.Generator:
    """A :class:`torch.Generator` from a generator, a seed or a scikit-learn ``random_state``.

    A :class:`torch.Generator` is returned as is (its draws advance the caller's state), an
    ``int`` seeds a fresh generator, a :class:`numpy.random.RandomState` is consumed for a seed
    and ``None`` draws a fresh seed from numpy's global state, as scikit-learn does. A new
    generator lives on ``device`` (default CPU).

    Examples
    --------
    >>> g = as_generator(0)
    >>> bool(torch.rand(1, generator=g) == torch.rand(1, generator=as_generator(0)))
    True
    """
    if isinstance(generator, torch.Generator):
        return generator
    if generator is None or isinstance(generator, np.random.RandomState):
        state = generator if generator is not None else np.random.mtrand._rand
        seed = int(state.randint(0, 2**31 - 1))
    elif isinstance(generator, numbers.Integral) and not isinstance(generator, bool):
        seed = int(generator)
    else:
        raise TypeError(
            "generator must be a torch.Generator, an int seed, a numpy RandomState or None, "
            f"got {type(generator).__name__}."
        )
    return torch.Generator(device=device if device is not None else "cpu").manual_seed(seed)
