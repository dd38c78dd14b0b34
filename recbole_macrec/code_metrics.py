"""Code-level Hit/NDCG: metrics computed as the released MACRec / MQL4GRec evaluation does.

The released evaluation compares generated code strings: when two items share a published code,
predicting that code counts for either item. Our models score exact items (colliding codes are
made unique by the pre-stage), so RecBole's Hit/NDCG are stricter than the published rows. These
metrics map every ranked item to the group of items sharing its published (pre-resolution) code,
drop an item whose group already appeared higher in the list (the released beam list holds each
code once), and count the target as found at the first position whose group is the target's.
"""
import os

import numpy as np
import torch

CODES_BEFORE = "codes_before_resolution.npz"   # in the pre-stage's derived folder


def save_codes_before(folder, items, codes):
    """Store each view's codes before collision resolution (``codes``: view -> ``[N, L]``) for
    the catalogue ``items`` (raw tokens) in the derived folder."""
    np.savez_compressed(os.path.join(folder, CODES_BEFORE), item_ids=np.asarray(items, dtype=str),
                        **{f"view_{v}": np.asarray(c, dtype=np.int64) for v, c in codes.items()})


def code_groups(folder, view, id2token):
    """``[n_items]`` long: internal item id -> the index of its published code among the distinct
    codes of ``view`` (row 0, the padding item, gets -1), or None when the folder has no record."""
    path = os.path.join(folder, CODES_BEFORE)
    if not os.path.isfile(path):
        return None
    data = np.load(path)
    if f"view_{view}" not in data:
        return None
    _, group = np.unique(data[f"view_{view}"], axis=0, return_inverse=True)
    by_token = dict(zip(data["item_ids"].tolist(), group.reshape(-1).tolist()))
    return torch.tensor([-1] + [by_token[str(t)] for t in id2token[1:]], dtype=torch.long)


def code_level_ranks(topk_items, targets, groups):
    """1-based rank ``[U]`` of each target's code group in the ranked lists ``topk_items [U, K]``
    (internal ids) once repeated groups are dropped; 0 where it is not in the list."""
    ranked = groups[topk_items]                                            # [U, K]
    K = ranked.shape[1]
    earlier = torch.ones(K, K, dtype=torch.bool).tril(-1)                 # [j, i]: i before j
    repeat = ((ranked[:, :, None] == ranked[:, None, :]) & earlier).any(dim=2)
    position = torch.cumsum(~repeat, dim=1)                                 # rank among kept entries
    found = (ranked == groups[targets][:, None]) & ~repeat
    return torch.where(found.any(dim=1), position.masked_fill(~found, K + 1).min(dim=1).values,
                       torch.zeros_like(targets))


def metrics_from_ranks(rank, ks):
    """``{"hit@k", "ndcg@k"}`` means over users of 1-based ranks ``[U]`` (0 = not ranked)."""
    rank = rank.double()
    out = {}
    for k in ks:
        hit = (rank >= 1) & (rank <= k)
        out[f"hit@{k}"] = float(hit.double().mean())
        out[f"ndcg@{k}"] = float(torch.where(hit, 1 / torch.log2(rank + 1), torch.zeros_like(rank)).mean())
    return out
