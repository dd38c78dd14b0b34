"""Trie-constrained beam search over semantic IDs, written once for every generative model.

The trie is a set of per-level tables built once per catalogue, so decoding needs no Python trie
and no per-beam callback: at level ``l`` a beam's prefix id selects a row that lists which codes
may follow and the prefix (or, at the last level, the item) each leads to. A level is stored
dense (``[prefixes, M]``, the codebook's every code) while that is small, and otherwise sparse:
each prefix's children sorted by code, padded to the level's largest branching (``[prefixes,
K]``), so deep levels of a large catalogue cost items x branching rather than items x M. Every
step is a handful of batched tensor operations on the device. Each backbone's ``step`` (the
network's side of one decoding step) is written beside it: :func:`t5_beam_step`,
:func:`causal_lm_beam_step`.
"""
import inspect
from dataclasses import dataclass

import numpy as np
import torch

DENSE_LIMIT = 1 << 22   # a level with at most this many prefix x code cells is stored dense


def cached_forward(model, cache, **inputs):
    """``(output, kv_cache)`` of ``model(**inputs)`` run with the KV ``cache`` (None on the first
    step), under whichever name this transformers version uses: ``cache`` (newer 5.x releases,
    which deprecate ``past_key_values`` for removal in 5.40) or ``past_key_values``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model   # peft wrappers
    name = "cache" if "cache" in inspect.signature(type(base).forward).parameters else "past_key_values"
    out = model(**inputs, **{name: cache}, use_cache=True, return_dict=True)
    return out, getattr(out, name)


@dataclass
class TrieLevel:
    """The successors of every prefix at one level. Dense: ``child [P, M]`` (-1 where code c may
    not follow prefix p; ``codes`` is None, the column is the code). Sparse: ``codes [P, K]`` and
    ``child [P, K]``, int32, each row the prefix's children sorted by code, padded with -1."""
    child: torch.Tensor
    codes: torch.Tensor = None

    @property
    def dense(self):
        return self.codes is None

    def nbytes(self):
        return sum(t.numel() * t.element_size() for t in (self.child, self.codes) if t is not None)

    def to(self, device):
        return TrieLevel(self.child.to(device), None if self.codes is None else self.codes.to(device))


def build_level(prefix, code, child, n_prefix, size, dense_limit):
    """One :class:`TrieLevel` from the unique ``(prefix, code) -> child`` triples ``[n]``."""
    if n_prefix * size <= dense_limit:
        table = np.full((n_prefix, size), -1, dtype=np.int64)
        table[prefix, code] = child
        return TrieLevel(torch.from_numpy(table))
    order = np.lexsort((code, prefix))
    prefix, code, child = prefix[order], code[order], child[order]
    counts = np.bincount(prefix, minlength=n_prefix)
    slot = np.arange(len(prefix)) - np.repeat(np.cumsum(counts) - counts, counts)
    codes = np.full((n_prefix, int(counts.max())), -1, dtype=np.int32)
    children = np.full_like(codes, -1)
    codes[prefix, slot] = code
    children[prefix, slot] = child
    return TrieLevel(torch.from_numpy(children), torch.from_numpy(codes))


@dataclass
class CodeTrie:
    """``levels[l]``: a :class:`TrieLevel`; ``offsets[l]`` is the token id of code 0 at level ``l``
    and ``sizes[l]`` the number of codes there."""
    levels: list
    offsets: list
    sizes: list

    @classmethod
    def from_codes(cls, codes, item_ids, offsets, sizes, dense_limit=DENSE_LIMIT):
        """Build from unique ``codes [N, L]`` (numpy or tensor) of items ``item_ids [N]``."""
        codes = np.asarray(codes.cpu() if torch.is_tensor(codes) else codes, dtype=np.int64)
        item_ids = np.asarray(item_ids.cpu() if torch.is_tensor(item_ids) else item_ids, dtype=np.int64)
        if len(np.unique(codes, axis=0)) != len(codes):
            raise ValueError("semantic IDs must be unique per item to decode them (resolve collisions)")
        n, n_levels = codes.shape
        prefix = np.zeros(n, dtype=np.int64)          # prefix id of length 0: one root
        n_prefix = 1
        levels = []
        for level in range(n_levels):
            if level + 1 < n_levels:
                _, nxt = np.unique(codes[:, : level + 1], axis=0, return_inverse=True)
                nxt = nxt.reshape(-1)
                n_next = int(nxt.max()) + 1
            else:
                nxt = item_ids
            # one (prefix, code) triple per distinct pair: items sharing a prefix share its edge
            _, first = np.unique(prefix * sizes[level] + codes[:, level], return_index=True)
            levels.append(build_level(prefix[first], codes[first, level], nxt[first], n_prefix,
                                      sizes[level], dense_limit))
            if level + 1 < n_levels:
                prefix, n_prefix = nxt, n_next
        return cls(levels, list(offsets), list(sizes))

    @classmethod
    def for_view(cls, vocab, view, device, dense_limit=DENSE_LIMIT):
        """The trie of every item's tokens in ``view`` of a :class:`SemanticIdVocab`."""
        table = vocab.item_token_table(view)
        return cls.from_codes(vocab.codes_of(view, table[1:]), torch.arange(1, len(table)),
                              vocab.level_offsets[view], vocab.level_sizes[view], dense_limit).to(device)

    @property
    def num_levels(self):
        return len(self.levels)

    def nbytes(self):
        return sum(level.nbytes() for level in self.levels)

    def to(self, device):
        return CodeTrie([level.to(device) for level in self.levels], self.offsets, self.sizes)


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
    device = trie.levels[0].child.device
    B, K = batch_size, beam_size
    scores = torch.zeros(B, 1, device=device)
    prefix = torch.zeros(B, 1, dtype=torch.long, device=device)
    rows = torch.arange(B, device=device)[:, None]
    tokens, reorder = None, None
    for level, table in enumerate(trie.levels):
        log_probs = step(tokens, reorder).float()
        lo, n_beams = trie.offsets[level], prefix.shape[1]
        child = table.child[prefix].long()                     # [B, n_beams, C]
        if table.dense:   # candidates: every code of the level
            codes = None
            cand = log_probs[:, lo:lo + trie.sizes[level]].view(B, n_beams, -1)
        else:             # candidates: the prefix's children
            codes = table.codes[prefix].long()
            cand = log_probs.view(B, n_beams, -1).gather(2, lo + codes.clamp_min(0))
        width = child.shape[2]
        cand = (cand + scores[..., None]).masked_fill(child < 0, float("-inf")).view(B, n_beams * width)
        k = min(K, n_beams * width)
        scores, flat = cand.topk(k, dim=1)
        if k < K:  # pad to K beams so that every later step has a fixed shape
            scores = torch.cat([scores, scores.new_full((B, K - k), float("-inf"))], dim=1)
            flat = torch.cat([flat, flat.new_zeros((B, K - k))], dim=1)
        beam = flat // width
        code = flat % width if codes is None else codes.view(B, -1).gather(1, flat)
        prefix = child.view(B, -1).gather(1, flat).clamp_min(0)
        reorder = (rows * n_beams + beam).view(-1)
        tokens = (code + lo).view(-1, 1)
    # the eos step: after a full item eos is the only allowed token; its log-probability counts
    eos_logp = step(tokens, reorder)[:, eos].float().view(B, K)
    scores, order = ((scores + eos_logp) / (trie.num_levels + 1)).sort(dim=1, descending=True)
    prefix = prefix.gather(1, order)
    valid = torch.isfinite(scores)
    items = torch.where(valid, prefix, torch.full_like(prefix, -1))
    return items, scores


def level_edges(table):
    """``(parent, code, child)`` ``[E]`` of every edge of a :class:`TrieLevel`, ordered by child
    (at every level but the last, a child prefix has exactly one parent edge)."""
    parent, slot = torch.nonzero(table.child >= 0, as_tuple=True)
    child = table.child[parent, slot].long()
    code = slot if table.dense else table.codes[parent, slot].long()
    order = torch.argsort(child)
    return parent[order], code[order], child[order]


def decoder_rows(trie):
    """Decoder rows one user's exact scoring runs: every prefix of the trie (the root and each
    level's distinct prefixes) plus one eos step per item."""
    rows = 1
    for table in trie.levels:
        rows += int((table.child >= 0).sum())
    return rows


@torch.no_grad()
def exact_scores(step, batch_size, trie, eos, n_items):
    """The score beam search ranks by, for every item of the trie: ``[B, n_items]`` (-inf for ids
    without an item), ``(sum of the item's L code log-probabilities + log p(eos) after them) /
    (L + 1)``. The decoder walks the whole trie level by level: each distinct prefix is decoded
    once per user, however many items share it.

    ``step`` is :func:`constrained_beam_search`'s, called with a varying number of rows: level
    ``l`` continues ``B * P_l`` rows (every user times every prefix of length ``l``), ``reorder``
    naming the row of the parent prefix."""
    B = batch_size
    device = trie.levels[0].child.device
    users = torch.arange(B, device=device)[:, None]
    log_probs = step(None, None).float()                       # [B, V]: the root of every user
    path = torch.zeros(B, 1, device=device)                   # [B, P]: log-probability sums of the prefixes
    for level, table in enumerate(trie.levels):
        parent, code, child = level_edges(table)
        n_prefix, lo = path.shape[1], trie.offsets[level]
        chosen = log_probs.view(B, n_prefix, -1)[:, parent, lo + code]   # [B, E]
        path = path[:, parent] + chosen                        # one edge per child, in child order
        reorder = (users * n_prefix + parent[None, :]).view(-1)
        log_probs = step((lo + code).repeat(B)[:, None], reorder).float()
    eos_logp = log_probs[:, eos].view(B, -1)
    out = torch.full((B, n_items), float("-inf"), device=device)
    out[:, child] = (path + eos_logp) / (trie.num_levels + 1)
    return out


def scores_to_matrix(items, scores, n_items):
    """``[B, n_items]`` with the beam scores at the returned items and -inf elsewhere."""
    out = scores.new_full((items.shape[0], n_items), float("-inf"))
    valid = items >= 0
    rows = torch.arange(items.shape[0], device=items.device)[:, None].expand_as(items)
    out[rows[valid], items[valid]] = scores[valid]
    return out


def t5_beam_step(t5, src, mask):
    """The ``step`` of :func:`constrained_beam_search` (and :func:`exact_scores`) for a T5: the
    encoder runs once on ``src [B, S]``; the decoder advances one token per call with its KV
    cache, reordered with the rows (``B * beam_size`` from the second call of a beam search; any
    number of rows per user for exact scoring)."""
    from transformers.modeling_outputs import BaseModelOutput

    B = src.shape[0]
    encoder = t5.get_encoder()(input_ids=src, attention_mask=mask, return_dict=True)
    state = {"enc": encoder.last_hidden_state, "mask": mask, "cache": None, "rows": None}

    def step(tokens, reorder):
        if tokens is None:
            tokens = src.new_full((B, 1), t5.config.decoder_start_token_id)
            state["rows"] = torch.arange(B, device=src.device)   # the user of each row
        else:
            if len(reorder) != len(state["rows"]):   # more rows per user (beam expansion, exact scoring)
                state["rows"] = state["rows"][reorder]
                state["enc"] = encoder.last_hidden_state[state["rows"]]
                state["mask"] = mask[state["rows"]]
            state["cache"].reorder_cache(reorder)
        out, state["cache"] = cached_forward(
            t5, state["cache"], encoder_outputs=BaseModelOutput(last_hidden_state=state["enc"]),
            attention_mask=state["mask"], decoder_input_ids=tokens)
        return torch.log_softmax(out.logits[:, -1].float(), dim=-1)

    return step


def causal_lm_beam_step(lm, ids, mask):
    """The ``step`` of :func:`constrained_beam_search` for a decoder-only LM: the left-padded
    prompt ``ids [B, P]`` (``mask``: its real tokens) runs once; then one token per call with the
    KV cache, the attention mask and positions growing and reordered with the beams."""
    state = {"mask": mask.long(), "pos": (mask.long().cumsum(1) - 1).clamp_min(0), "cache": None}

    def step(tokens, reorder):
        if tokens is None:
            out, state["cache"] = cached_forward(lm, None, input_ids=ids, attention_mask=state["mask"],
                                                 position_ids=state["pos"])
        else:
            state["cache"].reorder_cache(reorder)
            state["mask"] = torch.cat([state["mask"][reorder], state["mask"].new_ones(len(reorder), 1)], 1)
            pos = state["pos"][reorder][:, -1:] + 1
            state["pos"] = torch.cat([state["pos"][reorder], pos], 1)
            out, state["cache"] = cached_forward(lm, state["cache"], input_ids=tokens,
                                                 attention_mask=state["mask"], position_ids=pos)
        return torch.log_softmax(out.logits[:, -1].float(), dim=-1)

    return step
