"""KNN + LLE manifold projection (LSP §1.4)."""

from __future__ import annotations

import numpy as np
import torch

from models.runtime.manifold import FeatureDatabase, lle_weights, project_to_manifold


def test_knn_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    base, queries = torch.randn(500, 32, generator=g), torch.randn(40, 32, generator=g)
    idx = FeatureDatabase(base).knn(queries, 7)
    dist = ((queries[:, None] - base[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(idx.numpy(), dist.argsort(1)[:, :7].numpy())


def test_lle_weights_sum_to_one_and_reproduce_span():
    g = torch.Generator().manual_seed(1)
    nb = torch.randn(20, 10, 64, generator=g)
    coef = torch.softmax(torch.randn(20, 10, generator=g), 1) * 1.5 - 0.05  # any affine combination
    coef = coef / coef.sum(1, keepdim=True)
    q = (coef[:, :, None] * nb).sum(1)  # lies in the affine span of its neighbours
    w = lle_weights(q, nb)
    np.testing.assert_allclose(w.sum(1).numpy(), 1.0, atol=1e-5)
    recon = (w[:, :, None] * nb).sum(1)
    np.testing.assert_allclose(recon.numpy(), q.numpy(), atol=1e-3)
    np.testing.assert_allclose(w.numpy(), coef.numpy(), atol=1e-3)  # unique: 10 points in 64-d


def test_lle_survives_duplicate_neighbours():
    nb = torch.ones(3, 10, 16)  # a database of identical (silent) frames: singular normal equations
    w = lle_weights(torch.ones(3, 16), nb)
    assert torch.isfinite(w).all() and torch.allclose(w.sum(1), torch.ones(3))


def test_projection_blend_and_member_points():
    g = torch.Generator().manual_seed(2)
    base = torch.randn(300, 16, generator=g)
    db = FeatureDatabase(base)
    out = project_to_manifold(base[:5], db, k=10)
    np.testing.assert_allclose(out.numpy(), base[:5].numpy(), atol=1e-4)  # a database point projects to itself
    q = torch.randn(4, 16, generator=g)
    half = project_to_manifold(q, db, k=10, blend=0.5)
    full = project_to_manifold(q, db, k=10, blend=1.0)
    np.testing.assert_allclose(half.numpy(), (0.5 * q + 0.5 * full).numpy(), atol=1e-5)
