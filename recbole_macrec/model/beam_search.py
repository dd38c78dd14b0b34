"""Trie-constrained beam search over semantic IDs, written once for every generative model.

The trie is a set of dense per-level tables built once per catalogue, so decoding needs no
Python trie and no per-beam callback: at level ``l`` a beam's prefix id selects the row of
``allowed[l]`` (which codes may follow) and ``child[l]`` (the prefix id, or at the last level the
item id, they lead to). Every step is a handful of batched tensor operations on the device.
"""
import inspect
from dataclasses import dataclass

import numpy as np
import torch


def cached_forward(model, cache, **inputs):
    """``(output, kv_cache)`` of ``model(**inputs)`` run with the KV ``cache`` (None on the first
    step), under whichever name this transformers version uses: ``cache`` (newer 5.x releases,
    which deprecate ``past_key_values`` for removal in 5.40) or ``past_key_values``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model   # peft wrappers
    name = "cache" if "cache" in inspect.signature(type(base).forward).parameters else "past_key_values"
    out = model(**inputs, **{name: cache}, use_cache=True, return_dict=True)
    return out, getattr(out, name)


@dataclass
class CodeTrie:
    """``allowed[l] [P_l, M_l]`` bool and ``child[l] [P_l, M_l]`` long (-1 where not allowed);
    ``offsets[l]`` is the token id of code 0 at level ``l``."""
    allowed: list
    child: list
    offsets: list
    sizes: list

    @classmethod
    def from_codes(cls, codes, item_ids, offsets, sizes):
        """Build from unique ``codes [N, L]`` (numpy or tensor) of items ``item_ids [N]``."""
        codes = np.asarray(codes.cpu() if torch.is_tensor(codes) else codes, dtype=np.int64)
        item_ids = np.asarray(item_ids.cpu() if torch.is_tensor(item_ids) else item_ids, dtype=np.int64)
        if len(np.unique(codes, axis=0)) != len(codes):
            raise ValueError("semantic IDs must be unique per item to decode them (resolve collisions)")
        n, n_levels = codes.shape
        prefix = np.zeros(n, dtype=np.int64)          # prefix id of length 0: one root
        n_prefix = 1
        allowed, child = [], []
        for level in range(n_levels):
            if level + 1 < n_levels:
                _, nxt = np.unique(codes[:, : level + 1], axis=0, return_inverse=True)
                nxt = nxt.reshape(-1)
                n_next = int(nxt.max()) + 1
            else:
                nxt = item_ids
            table = np.full((n_prefix, sizes[level]), -1, dtype=np.int64)
            table[prefix, codes[:, level]] = nxt
            child.append(torch.from_numpy(table))
            allowed.append(torch.from_numpy(table >= 0))
            if level + 1 < n_levels:
                prefix, n_prefix = nxt, n_next
        return cls(allowed, child, list(offsets), list(sizes))

    @classmethod
    def for_view(cls, vocab, view, device):
        """The trie of every item's tokens in ``view`` of a :class:`SemanticIdVocab`."""
        table = vocab.item_token_table(view)
        return cls.from_codes(vocab.codes_of(view, table[1:]), torch.arange(1, len(table)),
                              vocab.level_offsets[view], vocab.level_sizes[view]).to(device)

    @property
    def num_levels(self):
        return len(self.child)

    def to(self, device):
        return CodeTrie([a.to(device) for a in self.allowed], [c.to(device) for c in self.child],
                        self.offsets, self.sizes)


@torch.no_grad()
def constrained_beam_search(step, batch_size, trie, beam_size, eos):
    """Top ``beam_size`` valid items per row, best first, scored as transformers' beam search
    scores them (``generate``'s ``sequences_scores`` with ``length_penalty=1`` and eos allowed only
    after a full item): (sum of the item's L code log-probabilities + log p(eos) after them) / (L + 1).

    ``step(tokens, reorder)`` runs the decoder one token further and returns log-probabilities
    ``[rows, vocab]`` for the last position: ``tokens`` is ``None`` on the first call (``rows =
    batch_size``, the decoder's start), then ``[batch_size * beam_size, 1]``; ``reorder`` is the
    ``[batch_size * beam_size]`` index of the previous row each new row continues (the caller
    reorders its cache and per-row state with it). ``eos``: the end token's id.

    Returns ``items [B, K]`` (internal item ids, -1 where fewer than K items exist) and
    ``scores [B, K]`` (-inf where item is -1).
    """
    device = trie.child[0].device
    B, K = batch_size, beam_size
    scores = torch.zeros(B, 1, device=device)
    prefix = torch.zeros(B, 1, dtype=torch.long, device=device)
    rows = torch.arange(B, device=device)[:, None]
    tokens, reorder = None, None
    for level in range(trie.num_levels):
        log_probs = step(tokens, reorder)
        lo, m = trie.offsets[level], trie.sizes[level]
        n_beams = prefix.shape[1]
        cand = log_probs[:, lo:lo + m].float().view(B, n_beams, m) + scores[..., None]
        cand = cand.masked_fill(~trie.allowed[level][prefix], float("-inf")).view(B, n_beams * m)
        k = min(K, n_beams * m)
        scores, flat = cand.topk(k, dim=1)
        if k < K:  # pad to K beams so that every later step has a fixed shape
            scores = torch.cat([scores, scores.new_full((B, K - k), float("-inf"))], dim=1)
            flat = torch.cat([flat, flat.new_zeros((B, K - k))], dim=1)
        beam, code = flat // m, flat % m
        prefix = trie.child[level][prefix.gather(1, beam), code].clamp_min(0)
        reorder = (rows * n_beams + beam).view(-1)
        tokens = (code + lo).view(-1, 1)
    # the eos step: after a full item eos is the only allowed token; its log-probability counts
    eos_logp = step(tokens, reorder)[:, eos].float().view(B, K)
    scores, order = ((scores + eos_logp) / (trie.num_levels + 1)).sort(dim=1, descending=True)
    prefix = prefix.gather(1, order)
    valid = torch.isfinite(scores)
    items = torch.where(valid, prefix, torch.full_like(prefix, -1))
    return items, scores


def scores_to_matrix(items, scores, n_items):
    """``[B, n_items]`` with the beam scores at the returned items and -inf elsewhere."""
    out = scores.new_full((items.shape[0], n_items), float("-inf"))
    valid = items >= 0
    rows = torch.arange(items.shape[0], device=items.device)[:, None].expand_as(items)
    out[rows[valid], items[valid]] = scores[valid]
    return out
