"""Gaussian-process PDE solvers for high-frequency and multi-scale problems (GP-HM).

>>> from gpkern.pde import Poisson, AllenCahn, Advection, PDEProblem, GPPDESolver
"""

from gpkern.pde.problems import Advection, AllenCahn, PDEProblem, Poisson
from gpkern.pde.solver import GPPDESolver, NyquistWarning

__all__ = ["Poisson", "AllenCahn", "Advection", "PDEProblem", "GPPDESolver", "NyquistWarning"]
