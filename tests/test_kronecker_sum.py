"""Kronecker sums, single-mode maps, eigenbasis rotations and test-point rows (linalg.kronecker)
against dense Kronecker products."""

import pytest
import torch

from gpkern.linalg.kronecker import (
    apply_along_mode,
    kron_dense,
    kron_eigh,
    kron_rotate,
    kron_sum_inverse,
    kron_sum_solve,
    rowwise_kron_columns,
    rowwise_kron_matmul,
)


def _eye_kron(shape, j, A):
    parts = [torch.eye(n, dtype=A.dtype) for n in shape]
    parts[j] = A
    return kron_dense(parts)


@pytest.mark.parametrize("shape", [(5,), (4, 3), (3, 4, 2)])
def test_kron_sum_inverse_matches_dense_and_solve(shape):
    g = torch.Generator().manual_seed(len(shape))
    mats = [torch.randn(n, n, generator=g, dtype=torch.float64) for n in shape]
    mats = [A + 3 * A.shape[0] * torch.eye(A.shape[0], dtype=A.dtype) for A in mats]
    R = torch.randn(shape, generator=g, dtype=torch.float64)
    dense = sum(_eye_kron(shape, j, A) for j, A in enumerate(mats))
    ref = torch.linalg.solve(dense, R.reshape(-1)).reshape(shape)
    torch.testing.assert_close(kron_sum_inverse(mats)(R), ref)
    torch.testing.assert_close(kron_sum_solve(mats, R), ref)


def test_apply_along_mode_is_a_mode_product():
    g = torch.Generator().manual_seed(0)
    shape = (3, 4, 5)
    X = torch.randn(shape, generator=g, dtype=torch.float64)
    for j in range(3):
        M = torch.randn(2, shape[j], generator=g, dtype=torch.float64)
        out = apply_along_mode(lambda Y, M=M: M @ Y, X, j)
        parts = [torch.eye(n, dtype=torch.float64) for n in shape]
        parts[j] = M
        new_shape = list(shape)
        new_shape[j] = 2
        torch.testing.assert_close(out, (kron_dense(parts) @ X.reshape(-1)).reshape(new_shape))


def test_kron_rotate_is_the_dense_eigenbasis():
    g = torch.Generator().manual_seed(1)
    Fs = [torch.randn(n, n, generator=g, dtype=torch.float64) for n in (3, 4)]
    _, Qs = kron_eigh([F @ F.T for F in Fs])
    Q = kron_dense(Qs)
    V = torch.randn(12, 2, generator=g, dtype=torch.float64)
    torch.testing.assert_close(kron_rotate(Qs, V), Q @ V)
    torch.testing.assert_close(kron_rotate(Qs, V, transpose=True), Q.T @ V)


def test_rowwise_kron_products_match_dense_rows():
    g = torch.Generator().manual_seed(2)
    rows = [torch.randn(6, n, generator=g, dtype=torch.float64) for n in (3, 2, 4)]
    dense = torch.stack([kron_dense([r[j : j + 1] for r in rows])[0] for j in range(6)])  # (6, N)
    V = torch.randn(24, 3, generator=g, dtype=torch.float64)
    torch.testing.assert_close(rowwise_kron_matmul(rows, V), dense @ V)
    torch.testing.assert_close(rowwise_kron_columns(rows), dense.T)
