"""Seeded k-means: pseudo-labels for MACRec and codebook initialisation for the RQ-VAE."""
import numpy as np

from recbole_macrec.errors import SettingError

FULL_KMEANS_ITEMS = 200_000


def kmeans(x, k, seed=2020, niter=50, nredo=3):
    """Cluster rows of ``x`` ``[n, d]`` into ``k`` groups; returns ``(centroids [k, d], labels [n])``.

    faiss is the fast path; the best of ``nredo`` seeded runs is kept, so the result is
    deterministic for a given seed and input.
    """
    import faiss

    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k-means with k={k} needs 1 <= k <= number of points ({n})")
    if k == n:  # every point its own cluster
        return x.copy(), np.arange(n, dtype=np.int64)
    # faiss trains on at most max_points_per_centroid * k points: all of them up to FULL_KMEANS_ITEMS
    # (every catalogue the papers use), a seeded sample of 256 per centroid beyond (at 10^6 items the
    # pseudo-labels' 300 x 10 passes over all points would take hours on a CPU); all are assigned
    per_centroid = max(256, (n + k - 1) // k + 1) if n <= FULL_KMEANS_ITEMS else 256
    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=int(seed), verbose=False, nredo=nredo,
                      max_points_per_centroid=per_centroid, min_points_per_centroid=1)
    km.train(x)
    _, labels = km.index.search(x, 1)
    return km.centroids.copy(), labels[:, 0].astype(np.int64)


def pseudo_labels(x, k, seed=2020, niter=300, nredo=10):
    """MACRec's pseudo-labels ``[n]``: k-means with ``k`` clusters on a raw view (the released
    data/kmeans.py: scikit-learn's 300 iterations and 10 restarts; here faiss with the same counts)."""
    n = len(x)
    if not 1 <= int(k) <= n:
        raise SettingError(f"sid_pseudo_label_k={k} must be between 1 and the number of items ({n})")
    return kmeans(x, int(k), seed=seed, niter=niter, nredo=nredo)[1]
