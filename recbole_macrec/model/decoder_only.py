"""Decoder-only backbone (a causal LM) of the semantic-ID recommenders (LCRec).

Sequences: ``[task] source [sep] target [eos]``; the loss covers the target tokens only.
Decoding: the prompt (left-padded) is encoded once, then the shared constrained beam search runs
the decoder with its KV cache. A subclass builds ``self.lm`` (after :meth:`set_vocab`) and the
token ids ``pad_id``, ``eos_id``, ``sep_id``, and says which tasks it trains (``task_rows``).
"""
import torch
import torch.nn.functional as F

from recbole_macrec.model.beam_search import causal_lm_beam_step
from recbole_macrec.model.packing import IGNORE
from recbole_macrec.model.semantic_id_recommender import SemanticIdRecommender


def left_pad(ids, mask):
    """Move each right-padded row ``[B, S]`` to the right end (padding first), as causal
    decoding of a batch needs."""
    S = ids.shape[1]
    shift = mask.sum(1, keepdim=True)
    index = (torch.arange(S, device=ids.device)[None, :] + shift) % S
    return ids.gather(1, index), mask.gather(1, index)


def concat_prompt_target(prompt, prompt_mask, target, target_mask, pad_id):
    """``[B, P + T]`` rows ``prompt target padding`` (target right after each row's prompt), the
    attention mask and labels (``-100`` everywhere except the target's tokens)."""
    B, P = prompt.shape
    T = target.shape[1]
    full = torch.cat([prompt, prompt.new_full((B, T), pad_id)], 1)
    full = full.masked_fill(~torch.cat([prompt_mask, prompt_mask.new_zeros(B, T)], 1), pad_id)
    p_len = prompt_mask.sum(1, keepdim=True)
    positions = torch.arange(T, device=prompt.device)[None, :] + p_len
    full.scatter_(1, positions, target.masked_fill(~target_mask, pad_id))
    labels = torch.full_like(full, IGNORE)
    labels.scatter_(1, positions, target.masked_fill(~target_mask, IGNORE))
    mask = torch.arange(P + T, device=prompt.device)[None, :] < p_len + target_mask.sum(1, keepdim=True)
    return full, mask, labels


class DecoderOnlyRecommender(SemanticIdRecommender):
    """A causal LM whose vocabulary gains the semantic-ID tokens."""

    @property
    def row_pads(self):   # task_rows: (ids, attention mask as long, labels)
        return self.pad_id, 0, IGNORE

    def task_groups(self, tasks):
        """All tasks in one forward pass when ``gr_pack_tasks``: a row is prompt and target
        together, so every task's rows have similar widths."""
        return [list(tasks)] if self.pack_tasks else [[task] for task in tasks]

    # ---- sequences -------------------------------------------------------------------------
    def wrap(self, task, body, body_mask):
        """``[task] body [sep]`` right-padded, from a right-padded ``body [B, S]``."""
        B = body.shape[0]
        ids = torch.cat([body.new_full((B, 1), self.vocab.task_ids[task]), body, body.new_full((B, 1), self.pad_id)], 1)
        mask = torch.cat([body_mask.new_ones(B, 1), body_mask, body_mask.new_zeros(B, 1)], 1)
        end = mask.sum(1, keepdim=True)
        ids.scatter_(1, end, self.sep_id)
        mask.scatter_(1, end, True)
        return ids.masked_fill(~mask, self.pad_id), mask

    def history_prompt(self, view, item_seq, item_len, task="seqrec"):
        """``[task] codes of the history [sep]`` ``[B, P]`` right-padded, and its mask."""
        B, T = item_seq.shape
        L = self.vocab.num_levels(view)
        body = self.item_tokens(view, item_seq).view(B, T * L)
        body_mask = torch.arange(T * L, device=body.device)[None, :] < (item_len * L)[:, None]
        ids, mask = self.wrap(task, body, body_mask)
        width = 2 + int(item_len.max()) * L
        return ids[:, :width], mask[:, :width]

    def code_target(self, view, items):
        """``[B, L + 1]`` the items' code tokens then eos, and an all-true mask."""
        tok = self.item_tokens(view, items)
        ids = torch.cat([tok, tok.new_full((tok.shape[0], 1), self.eos_id)], 1)
        return ids, torch.ones_like(ids, dtype=torch.bool)

    def token_losses(self, rows):
        """Cross-entropy ``[N, S - 1]`` of each next token that has a label (0 elsewhere), and
        which have one. The LM head runs on labelled positions only: with a from-scratch model the
        vocabulary projection is most of the compute, and most positions are prompt."""
        ids, mask, labels = rows
        hidden = self.lm.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1]
        target = labels[:, 1:]
        labelled = target.ne(IGNORE)
        logits = self.lm.get_output_embeddings()(hidden[labelled])
        token_loss = hidden.new_zeros(target.shape, dtype=torch.float)
        token_loss[labelled] = F.cross_entropy(logits.float(), target[labelled], reduction="none")
        return token_loss, labelled

    # ---- scoring and decoding --------------------------------------------------------------
    def decode_prompt(self, interaction, view):
        return self.history_prompt(view, interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])

    def teacher_forced_scores(self, interaction, view, items):
        """Mean log-probability ``[B]`` of ``items [B]``' L code tokens and the eos after them,
        after each row's prompt (the quantity beam search ranks by)."""
        prompt, pmask = self.decode_prompt(interaction, view)
        ids, mask, labels = concat_prompt_target(prompt, pmask, *self.code_target(view, items), self.pad_id)
        logp = torch.log_softmax(self.lm(input_ids=ids, attention_mask=mask).logits[:, :-1].float(), -1)
        target = labels[:, 1:]
        picked = logp.gather(2, target.clamp_min(0)[..., None])[..., 0]
        labelled = target != IGNORE
        return (picked * labelled).sum(1) / labelled.sum(1)

    def beam_step(self, interaction, view):
        ids, mask = left_pad(*self.decode_prompt(interaction, view))
        return causal_lm_beam_step(self.lm, ids, mask), ids.shape[0]
