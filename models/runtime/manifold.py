"""Manifold projection of audio features onto an identity's feature database (LSP §1.4).

Each APC frame is replaced by the locally-linear reconstruction from its K nearest database frames
(the person's own training speech), which moves any speaker's features toward the target person.
"""

from __future__ import annotations

import torch

QUERY_CHUNK = 1024  # queries per distance matrix: bounds memory to QUERY_CHUNK x M floats


class FeatureDatabase:
    """An (M, D) feature database with cached squared norms for brute-force KNN."""

    def __init__(self, features: torch.Tensor) -> None:
        if features.ndim != 2 or features.shape[0] < 1:
            raise ValueError(f"feature database must be (M, D) with M >= 1, got {tuple(features.shape)}")
        self.features = features.float().contiguous()
        self.sq_norms = (self.features**2).sum(1)  # (M,)

    def knn(self, queries: torch.Tensor, k: int) -> torch.Tensor:
        """Indices (F, k) of the k nearest database rows to each query (squared L2), nearest first."""
        k = min(k, self.features.shape[0])
        out = []
        for chunk in queries.float().split(QUERY_CHUNK):
            # |q|^2 is the same for every candidate of a query, so |b|^2 - 2 q.b ranks them.
            dist = torch.addmm(self.sq_norms[None], chunk, self.features.t(), alpha=-2.0)
            out.append(dist.topk(k, dim=1, largest=False).indices)
        return torch.cat(out) if out else torch.zeros(0, k, dtype=torch.long)


def lle_weights(queries: torch.Tensor, neighbours: torch.Tensor, reg: float = 1e-6) -> torch.Tensor:
    """Weights w (F, K), sum(w) = 1, minimising |q - sum_i w_i n_i| for each query (LSP §1.4).

    Substituting w_0 = 1 - sum_{i>=1} w_i leaves the (K-1) x (K-1) normal equations
    (A^T A) w' = A^T (q - n_0) with A = [n_i - n_0]. The original solves them unregularised; we add
    `reg` x mean(diag(A^T A)) to the diagonal so duplicate database frames (silence) cannot make the
    system singular. Solved in float64.

    Args:
        queries: (F, D); neighbours: (F, K, D).
    """
    q = queries.double()
    nb = neighbours.double()
    if nb.shape[1] == 1:
        return torch.ones(nb.shape[0], 1, dtype=queries.dtype, device=queries.device)
    a = (nb[:, 1:] - nb[:, :1]).transpose(1, 2)  # (F, D, K-1)
    gram = a.transpose(1, 2) @ a  # (F, K-1, K-1)
    scale = gram.diagonal(dim1=1, dim2=2).mean(1).clamp(min=1e-12)
    gram = gram + reg * scale[:, None, None] * torch.eye(gram.shape[1], dtype=gram.dtype, device=gram.device)
    rhs = a.transpose(1, 2) @ (q - nb[:, 0])[:, :, None]  # (F, K-1, 1)
    w_rest = torch.linalg.solve(gram, rhs)[:, :, 0]
    w = torch.cat([1 - w_rest.sum(1, keepdim=True), w_rest], 1)
    return w.to(queries.dtype)


def project_to_manifold(features: torch.Tensor, database: FeatureDatabase, k: int = 10,
                        blend: float = 1.0) -> torch.Tensor:
    """(1 - blend) * f + blend * LLE reconstruction of f from its k nearest database frames.

    Args:
        features: (F, D) APC features; k: neighbours (config `Knear`); blend: `LLE_percent`.
    Returns:
        (F, D) projected features.
    """
    if blend == 0:
        return features
    idx = database.knn(features, k)  # (F, k)
    neighbours = database.features[idx]  # (F, k, D)
    w = lle_weights(features, neighbours)
    recon = (w[:, :, None] * neighbours).sum(1)
    return (1 - blend) * features + blend * recon
