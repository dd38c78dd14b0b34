"""Collision statistics and resolution for semantic-ID tables ``codes [N, L]``."""
import numpy as np


def collision_rate(codes):
    """(N - number of distinct code tuples) / N."""
    codes = np.asarray(codes)
    return (len(codes) - len(np.unique(codes, axis=0))) / max(len(codes), 1)


def codebook_stats(codes, codebook_size):
    """Per level: fraction of the codebook used and perplexity (exp of code entropy)."""
    codes = np.asarray(codes)
    stats = []
    for level in range(codes.shape[1]):
        counts = np.bincount(codes[:, level], minlength=codebook_size)
        p = counts[counts > 0] / counts.sum()
        stats.append({"level": level, "usage": float((counts > 0).mean()),
                      "perplexity": float(np.exp(-(p * np.log(p)).sum()))})
    return stats


def colliding_groups(codes):
    """Lists of row indices sharing a code tuple (groups of size >= 2), ordered by first row."""
    codes = np.asarray(codes)
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    groups = {}
    for row in np.flatnonzero(counts[inverse] > 1):
        groups.setdefault(int(inverse[row]), []).append(int(row))
    return sorted(groups.values(), key=lambda g: g[0])


def cyclic_distances(codes, level, codebook_size):
    """Stand-in distances when no embeddings exist: code c is (c - own code) mod M away."""
    own = np.asarray(codes)[:, level][:, None]
    return (np.arange(codebook_size)[None, :] - own) % codebook_size


def resolve_collisions(codes, last_distances, prev_distances=None):
    """Make every code tuple unique, keeping the code length L.

    Inside a colliding group the item nearest its last-level codeword keeps the tuple; each other
    item moves to its next-nearest last-level codeword whose tuple is free. When a prefix has no
    free last-level code left, the item moves to its next-nearest free level L-2 codeword first.
    ``last_distances [N, M]`` (and ``prev_distances [N, M]``) rank candidate codewords per item.
    Returns ``(new_codes, moved_rows)``; only colliding rows can change.
    """
    codes = np.array(codes, dtype=np.int64, copy=True)
    n_levels = codes.shape[1]
    taken = {tuple(row) for row in codes}
    moved = []
    for group in colliding_groups(codes):
        order = sorted(group, key=lambda r: (last_distances[r, codes[r, -1]], r))
        for row in order[1:]:
            new = _free_last_code(codes[row], last_distances[row], taken)
            if new is None and prev_distances is not None and n_levels >= 2:
                new = _free_two_level_code(codes[row], prev_distances[row], last_distances[row], taken)
            if new is None:
                raise ValueError(f"cannot resolve the collision of item row {row}: every code "
                                 f"under its prefix is taken (codebook too small)")
            codes[row] = new
            taken.add(tuple(new))
            moved.append(row)
    return codes, sorted(moved)


def _free_last_code(row, distances, taken):
    for code in np.argsort(distances, kind="stable"):
        candidate = (*row[:-1], int(code))
        if candidate not in taken:
            return np.array(candidate)
    return None


def _free_two_level_code(row, prev_distances, last_distances, taken):
    for prev in np.argsort(prev_distances, kind="stable"):
        base = np.array([*row[:-2], int(prev), int(row[-1])])
        found = _free_last_code(base, last_distances, taken)
        if found is not None:
            return found
    return None


def add_extra_level(codes):
    """TIGER-style alternative: append a level numbering the items of each colliding tuple."""
    codes = np.asarray(codes, dtype=np.int64)
    extra = np.zeros(len(codes), dtype=np.int64)
    for group in colliding_groups(codes):
        extra[group] = np.arange(len(group))
    return np.concatenate([codes, extra[:, None]], axis=1)


def sinkhorn_reassign(codes, last_distances, epsilon, iters, rounds=20):
    """LC-Rec's collision handling (its index/generate_indices.py): up to ``rounds`` times, every
    group of items sharing a code tuple gets its last level re-assigned by Sinkhorn over the
    group's own distances ``last_distances [N, M]`` (the prefix stays), which spreads the group
    over distinct codewords. Items with identical inputs cannot be separated this way and stay
    colliding. Returns ``(new_codes, moved_rows)``."""
    import torch

    from recbole_macrec.quantization.rqvae import sinkhorn

    original = np.asarray(codes, dtype=np.int64)
    codes = original.copy()
    for _ in range(rounds):
        groups = colliding_groups(codes)
        if not groups:
            break
        for group in groups:
            q = sinkhorn(torch.as_tensor(last_distances[group]), epsilon, iters)
            codes[group, -1] = q.argmax(dim=1).numpy()
    moved = np.flatnonzero((codes != original).any(axis=1))
    return codes, [int(r) for r in moved]
