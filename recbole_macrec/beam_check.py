"""How much of the exact top-k a semantic-ID model's beam search finds.

A semantic-ID model scores every item (the length-normalised log-probability of its code
sequence, what beam search ranks by); beam search returns an approximation of that score's
top items. For the first ``users`` users of an evaluation loader this compares, per user, the
top-k of the model's own ranking under beam search (``gr_full_sort: beam``) and exactly
(``exact``: every item scored, fused as the beams are): the share of the exact top-k that the
beam returns (recall), and NDCG@k of the held-out item under both rankings.
"""
import time

import numpy as np
import torch


def _ranked(scores, history_index, k):
    """Top-k ``[B, k]`` of ``scores`` as RecBole's evaluator ranks them (padding item and
    history items masked), and which are real items."""
    scores = scores.clone()
    scores[:, 0] = float("-inf")
    if history_index is not None:
        scores[history_index] = float("-inf")
    top, items = scores.topk(k, dim=1)
    return items, torch.isfinite(top)


def _ndcg(items, valid, target, k):
    hit = (items == target[:, None]) & valid
    rank = torch.where(hit.any(1), hit.float().argmax(1) + 1, torch.zeros_like(target))
    return torch.where(rank > 0, 1.0 / torch.log2(rank.float() + 1), torch.zeros(len(rank))).numpy()


@torch.no_grad()
def beam_check(model, eval_data, users, k=10):
    """Beam vs exact on the first ``users`` users of ``eval_data`` (a RecBole full-sort loader).
    Returns ``{"users", "k", "beam_size", "recall_mean", "recall_quantiles", "recall_counts",
    "ndcg_beam", "ndcg_exact", "beam_s", "exact_s", "decoder_rows"}`` (seconds: decoding those
    users; decoder rows per user and view, exact vs beam)."""
    model.eval()
    device = next(model.parameters()).device
    recalls, ndcg_beam, ndcg_exact, seconds = [], [], [], {"beam": 0.0, "exact": 0.0}
    seen = 0
    for interaction, history_index, positive_u, positive_i in eval_data:
        take = min(len(interaction), users - seen)
        if take <= 0:
            break
        batch = interaction[torch.arange(take)].to(device)
        target = torch.full((len(interaction),), -1, dtype=torch.long)
        target[positive_u.cpu()] = positive_i.cpu()   # leave-one-out: one held-out item per user
        target = target[:take]
        if history_index is not None:
            keep = history_index[0] < take
            history_index = (history_index[0][keep], history_index[1][keep])
        ranked = {}
        for mode in ("beam", "exact"):
            start = time.perf_counter()
            scores = model.full_sort_predict(batch, mode=mode).cpu()
            seconds[mode] += time.perf_counter() - start
            ranked[mode] = _ranked(scores, history_index, k)
        (beam, beam_valid), (exact, exact_valid) = ranked["beam"], ranked["exact"]
        for b in range(take):
            truth = set(exact[b][exact_valid[b]].tolist())
            found = set(beam[b][beam_valid[b]].tolist())
            recalls.append(len(truth & found) / max(1, len(truth)))
        ndcg_beam.append(_ndcg(beam, beam_valid, target, k))
        ndcg_exact.append(_ndcg(exact, exact_valid, target, k))
        seen += take
    recalls = np.array(recalls)
    values, counts = np.unique(np.round(recalls, 4), return_counts=True)
    return {"users": int(seen), "k": k, "beam_size": int(model.beam_size), "recall_mean": float(recalls.mean()),
            "recall_quantiles": {q: float(np.quantile(recalls, float(q))) for q in ("0", "0.1", "0.5", "0.9", "1")},
            "recall_counts": {str(v): int(c) for v, c in zip(values, counts)},
            "ndcg_beam": float(np.concatenate(ndcg_beam).mean()), "ndcg_exact": float(np.concatenate(ndcg_exact).mean()),
            "beam_s": round(seconds["beam"], 3), "exact_s": round(seconds["exact"], 3),
            "decoder_rows": {view: dict(zip(("exact", "beam"), model.exact_cost(view))) for view in model.inference_views}}
