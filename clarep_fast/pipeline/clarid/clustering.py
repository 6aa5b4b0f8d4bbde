"""The paper's interpretability measure: NMI between k-means clusters of features and the classes.

k-means (Lloyd's algorithm, k-means++ seeding, several restarts, the lowest inertia wins) on the
rows of a (n, d) feature matrix, then the normalized mutual information of clusters and labels with
the arithmetic-mean normalization:  NMI = I(A; B) / ((H(A) + H(B)) / 2)  (1 = clusters are the classes).
"""

from __future__ import annotations

import torch
from torch import Tensor


def kmeans(features: Tensor, clusters: int, *, restarts: int = 10, iterations: int = 100, seed: int = 0) -> Tensor:
    """Cluster index (n,) of every row of ``features`` (n, d)."""
    if features.dim() != 2 or features.shape[0] < clusters:
        raise ValueError(f"features must be (n, d) with n >= clusters = {clusters}, got {tuple(features.shape)}")
    points = features.double()
    generator = torch.Generator().manual_seed(seed)
    best, best_inertia = None, float("inf")
    for _ in range(restarts):
        centers = _plus_plus(points, clusters, generator)
        for _ in range(iterations):
            assignment = torch.cdist(points, centers).argmin(1)
            moved = torch.stack(
                [points[assignment == j].mean(0) if (assignment == j).any() else centers[j] for j in range(clusters)]
            )
            if torch.allclose(moved, centers):
                break
            centers = moved
        inertia = (points - centers[assignment]).square().sum().item()
        if inertia < best_inertia:
            best, best_inertia = assignment, inertia
    return best


def _plus_plus(points: Tensor, clusters: int, generator: torch.Generator) -> Tensor:
    """k-means++ seeding: each next center drawn with probability ∝ squared distance to the nearest one."""
    chosen = [int(torch.randint(len(points), (1,), generator=generator))]
    distance = (points - points[chosen[0]]).square().sum(1)
    for _ in range(clusters - 1):
        weights = distance / distance.sum() if distance.sum() > 0 else torch.full_like(distance, 1 / len(distance))
        chosen.append(int(torch.multinomial(weights.float(), 1, generator=generator)))
        distance = torch.minimum(distance, (points - points[chosen[-1]]).square().sum(1))
    return points[chosen].clone()


def normalized_mutual_information(labels: Tensor, clusters: Tensor) -> float:
    """NMI (arithmetic normalization) of two labelings of the same n items."""
    if labels.shape != clusters.shape or labels.dim() != 1:
        raise ValueError(
            f"labels and clusters must be (n,) of one length, got {tuple(labels.shape)} and {tuple(clusters.shape)}"
        )
    _, a = labels.unique(return_inverse=True)
    _, b = clusters.unique(return_inverse=True)
    joint = torch.zeros(int(a.max()) + 1, int(b.max()) + 1, dtype=torch.float64)
    joint.index_put_((a, b), torch.ones(len(a), dtype=torch.float64), accumulate=True)
    joint /= len(a)
    pa, pb = joint.sum(1), joint.sum(0)
    nonzero = joint > 0
    mutual = (joint[nonzero] * (joint[nonzero] / (pa[:, None] * pb[None, :])[nonzero]).log()).sum()
    entropy_a = -(pa * pa.log()).sum()
    entropy_b = -(pb * pb.log()).sum()
    denominator = (entropy_a + entropy_b) / 2
    return 1.0 if denominator == 0 else float(mutual / denominator)


def feature_nmi(features: Tensor, labels: Tensor, *, seed: int = 0) -> float:
    """NMI of k-means (k = number of classes) on features standardized per dimension."""
    standardized = (features.double() - features.double().mean(0)) / features.double().std(0).clamp_min(1e-8)
    return normalized_mutual_information(labels, kmeans(standardized, int(labels.unique().numel()), seed=seed))


def background_spread(images: Tensor, labels: Tensor) -> float | None:
    """Within-class spread of the background color, estimated from the 1-pixel image border
    (the digits of the default dataset never touch it): the standard deviation of the border's
    mean RGB over a class's images, averaged over channels and classes. Images in [-1, 1] or [0, 1].
    None when no class has two images."""
    # (n, 3, border)
    border = torch.cat([images[:, :, 0], images[:, :, -1], images[:, :, 1:-1, 0], images[:, :, 1:-1, -1]], dim=2)
    colors = border.double().mean(2)  # (n, 3)
    spreads = [colors[labels == c].std(0).mean() for c in labels.unique() if (labels == c).sum() > 1]
    return float(torch.stack(spreads).mean()) if spreads else None
