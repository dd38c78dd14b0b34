"""Encoder-decoder backbone (T5) of the semantic-ID recommenders TIGER, MACRec and MQL4GRec.

A task's source is a prompt token, then a history's or one item's tokens in one view, then eos;
its target is the target item's L tokens in a view, then eos. Inputs are built on the device from
RecBole batches.
"""
from logging import getLogger

import torch
from transformers import T5Config, T5ForConditionalGeneration

from recbole_macrec.errors import SettingError
from recbole_macrec.model.beam_search import t5_beam_step
from recbole_macrec.model.dropout_mask import dropout
from recbole_macrec.model.packing import IGNORE, stack_rows
from recbole_macrec.model.semantic_id_recommender import SemanticIdRecommender, load_code_tables, model_views
from recbole_macrec.model.t5_training import cross_entropy_per_token, encoder_states, supports, t5_logits
from recbole_macrec.model.vocab import EOS, PAD

# task -> (source view, source kind, target view), views by position in ``gr_views`` (v1 = 0,
# v2 = 1); kind "seq": the history, "item": the target item itself. RANDOM (seqrec_cross,
# MQL4GRec's fusionseqrec): a history in one view -> the next item in the other, the direction
# drawn per row each time the row is used. The order fixes the prompt tokens' ids.
RANDOM = "random"
TASKS = {
    "seqrec": (0, "seq", 0),
    "seqrec_v2": (1, "seq", 1),
    "item_v1_to_v2": (0, "item", 1),
    "item_v2_to_v1": (1, "item", 0),
    "seqrec_v1_to_v2": (0, "seq", 1),
    "seqrec_v2_to_v1": (1, "seq", 0),
    "seqrec_cross": (RANDOM, "seq", RANDOM),
}
# the released code's names, which assume the second view is an image
TASK_ALIASES = {
    "seqimage": "seqrec_v2",
    "item2image": "item_v1_to_v2",
    "image2item": "item_v2_to_v1",
    "seqitem2image": "seqrec_v1_to_v2",
    "seqimage2item": "seqrec_v2_to_v1",
    "fusionseqrec": "seqrec_cross",
}


def task_name(name):
    """The task a ``gr_tasks`` entry names (its released alias accepted)."""
    task = TASK_ALIASES.get(name, name)
    if task not in TASKS:
        raise SettingError(f"unknown task '{name}' in gr_tasks (known: {', '.join(TASKS)}; "
                           f"released names: {', '.join(TASK_ALIASES)})")
    return task


def task_settings(config):
    """``(tasks, {task: weight})`` of ``gr_tasks`` and ``gr_task_weights``, aliases resolved."""
    tasks = [task_name(t) for t in config["gr_tasks"] or []]
    weights = {}
    for name, weight in (config["gr_task_weights"] or {}).items():
        task = TASK_ALIASES.get(name, name)
        if task not in tasks:
            raise SettingError(f"gr_task_weights names '{name}', which is not in gr_tasks {tasks}")
        weights[task] = weight
    return tasks, weights


class EncoderDecoderRecommender(SemanticIdRecommender):
    """T5 over semantic IDs. Subclasses choose the tasks (``gr_tasks``) and may add losses."""

    row_pads = (PAD, IGNORE)   # task_rows: (source, target)
    eos_id = EOS

    @classmethod
    def check_settings(cls, config):
        super().check_settings(config)
        views = model_views(config)
        for task in task_settings(config)[0]:
            src, _, tgt = TASKS[task]
            if (src == RANDOM or max(src, tgt) >= 1) and len(views) < 2:
                raise SettingError(f"task '{task}' needs two views, gr_views = {views}")

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.set_tasks(*task_settings(config))
        # Every known task keeps its prompt token, so that switching tasks off (ablations) leaves
        # the vocabulary, and hence the initial weights, unchanged.
        self.set_vocab(load_code_tables(dataset, self.views), list(TASKS))
        self.t5 = T5ForConditionalGeneration(T5Config(
            vocab_size=self.vocab.size, d_model=config["d_model"], d_kv=config["d_kv"],
            d_ff=config["d_ff"], num_layers=config["num_layers"],
            num_decoder_layers=config["num_decoder_layers"], num_heads=config["num_heads"],
            dropout_rate=config["dropout_rate"], feed_forward_proj=config["feed_forward_proj"],
            pad_token_id=PAD, eos_token_id=EOS, decoder_start_token_id=PAD,
        ))
        self.fast_train = config["gr_fast_train"] is not False and supports(self.t5)
        self.train_dropout = dropout   # the lean forward's dropout (benchmarks swap in torch's)
        if config["gr_fast_train"] is not False and not self.fast_train:
            getLogger().warning(f"gr_fast_train: the lean training forward computes relu T5s only "
                                f"(feed_forward_proj={self.t5.config.feed_forward_proj}): training uses "
                                f"transformers' forward")

    # ---- token construction (all on the device) -------------------------------------------
    def history_source(self, view, item_seq, item_len, task, max_len=None):
        """Source ``[B, S]`` and mask: prompt, the history's tokens (oldest first), eos, padding.

        ``item_seq [B, T]`` is RecBole's left-aligned, zero-padded history; ``S`` is cut to the
        batch's own longest history (``max_len``, when the caller knows it: reading it from the
        device costs a host sync)."""
        B, T = item_seq.shape
        L = self.vocab.num_levels(view)
        flat = self.item_tokens(view, item_seq).view(B, T * L)
        src = torch.cat([flat.new_full((B, 1), self.vocab.task_ids[task]), flat, flat.new_zeros(B, 1)], 1)
        src.scatter_(1, (1 + item_len * L).long().view(-1, 1), EOS)
        max_len = int(item_len.max()) if max_len is None else max_len
        src = src[:, : 2 + max_len * L]
        return src, src.ne(PAD)

    def item_source(self, view, items, task):
        """Source ``[B, L + 2]``: prompt, one item's tokens, eos."""
        tok = self.item_tokens(view, items)
        B = tok.shape[0]
        return torch.cat([tok.new_full((B, 1), self.vocab.task_ids[task]), tok, tok.new_full((B, 1), EOS)], 1)

    def target_tokens(self, view, items):
        """Target ``[B, L + 1]``: the item's tokens, then eos."""
        tok = self.item_tokens(view, items)
        return torch.cat([tok, tok.new_full((tok.shape[0], 1), EOS)], 1)

    def task_kind(self, task):
        return TASKS[task][1]

    def task_source(self, view, kind, interaction, task, max_len):
        """Source ``[B, S]`` of ``task`` in ``view``: the history (``kind`` "seq") or the target item."""
        if kind == "seq":
            return self.history_source(view, interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN],
                                       task, max_len)[0]
        return self.item_source(view, interaction[self.POS_ITEM_ID], task)

    def task_rows(self, task, interaction, max_len=None):
        """``(source [B, S], target [B, L + 1])`` of ``task`` for a RecBole batch (``max_len``: its
        longest history, if known). A RANDOM task draws each row's source view (torch's RNG:
        seeded runs repeat) and targets the other view."""
        src_view, kind, tgt_view = TASKS[task]
        items = interaction[self.POS_ITEM_ID]
        if src_view != RANDOM:
            src = self.task_source(self.views[src_view], kind, interaction, task, max_len)
            return src, self.target_tokens(self.views[tgt_view], items)
        from_view = (torch.rand(len(items), device=items.device) < 0.5).long()
        sources = [self.task_source(view, kind, interaction, task, max_len) for view in self.views[:2]]
        targets = [self.target_tokens(view, items) for view in self.views[:2]]
        return stack_rows(sources, from_view, PAD), stack_rows(targets, 1 - from_view, IGNORE)

    def seq2seq_logits(self, src, mask, decoder_input_ids):
        """``[B, T, vocab]``: the T5's logits; while training with ``gr_fast_train``, computed by
        the lean forward of :mod:`t5_training` (the same function, fewer operations)."""
        if self.training and self.fast_train:
            return t5_logits(self.t5, src, mask, decoder_input_ids, self.train_dropout)
        return self.t5(input_ids=src, attention_mask=mask, decoder_input_ids=decoder_input_ids,
                       return_dict=True).logits

    def encoder_hidden_states(self, tokens, mask):
        """``[B, S, d]``: the T5 encoder's last hidden states (lean while training, as above)."""
        if self.training and self.fast_train:
            return encoder_states(self.t5, tokens, mask, self.train_dropout)
        return self.t5.get_encoder()(input_ids=tokens, attention_mask=mask).last_hidden_state

    def token_losses(self, rows):
        """Cross-entropy ``[R, L + 1]`` of each target token given its source, and which count."""
        src, target = rows
        logits = self.seq2seq_logits(src, src.ne(PAD), self.t5._shift_right(target))
        return cross_entropy_per_token(logits, target, IGNORE), target.ne(IGNORE)

    # ---- scoring and decoding ----------------------------------------------------------------
    def decode_task(self, view):
        """The task whose target is ``view`` from a history in the same view (seqrec, seqrec_v2)."""
        index = self.views.index(view)
        for task in self.tasks:
            src, kind, tgt = TASKS[task]
            if kind == "seq" and src == index and tgt == index:
                return task
        raise ValueError(f"no history -> next item task for view '{view}' in gr_tasks {self.tasks}")

    def decode_source(self, interaction, view):
        return self.history_source(view, interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN],
                                   self.decode_task(view))

    def beam_step(self, interaction, view):
        src, mask = self.decode_source(interaction, view)
        return t5_beam_step(self.t5, src, mask), src.shape[0]

    def teacher_forced_scores(self, interaction, view, items):
        """Mean log-probability ``[B]`` of ``items [B]``'s L tokens and the eos after them, given
        each row's history in ``view``: the quantity beam search ranks by."""
        src, mask = self.decode_source(interaction, view)
        target = self.target_tokens(view, items)
        logits = self.t5(input_ids=src, attention_mask=mask,
                         decoder_input_ids=self.t5._shift_right(target), return_dict=True).logits
        logp = torch.log_softmax(logits.float(), dim=-1).gather(2, target[..., None])[..., 0]
        return logp.mean(dim=1)
