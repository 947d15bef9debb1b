"""Linear algebra: the dense twin (Cholesky) and the structured backends."""
