"""Shared base of the encoder-decoder generative recommenders (TIGER, MACRec, MQL4GRec).

An item is L semantic-ID tokens per view. A task maps source tokens (a prompt token, then a
history's or an item's tokens, then eos) to the target item's L tokens plus eos. Inputs are
built on the device from RecBole batches; decoding is the shared constrained beam search.
"""
from logging import getLogger

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType
from transformers import T5Config, T5ForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutput

from recbole_macrec.data.device_loader import TASK_FIELD
from recbole_macrec.errors import SettingError
from recbole_macrec.model.beam_search import CodeTrie, cached_forward, constrained_beam_search, scores_to_matrix
from recbole_macrec.model.packing import IGNORE, pad_cat, segment_token_means
from recbole_macrec.model.vocab import EOS, PAD, SemanticIdVocab

# task -> (source view, source kind, target view index in self.views). "seq": the history;
# "item": the target item itself. View 0 is the first of ``gr_views`` (text), view 1 the second.
# RANDOM: MQL4GRec's fusionseqrec, a history in one view -> the next item in the other, the
# direction drawn per row each time the row is used.
RANDOM = "random"
TASKS = {
    "seqrec": (0, "seq", 0),
    "seqimage": (1, "seq", 1),
    "item2image": (0, "item", 1),
    "image2item": (1, "item", 0),
    "seqitem2image": (0, "seq", 1),
    "seqimage2item": (1, "seq", 0),
    "fusionseqrec": (RANDOM, "seq", RANDOM),
}
TASK_MIXES = ("released", "per_batch")


def task_mix_setting(config):
    """``gr_task_mix``: ``released`` (every epoch: each history task over every training row,
    each item task over every catalogue item, shuffled together; loss = mean over a step's target
    tokens) or ``per_batch`` (every task built from each RecBole batch; loss = sum of per-task
    means)."""
    mix = config["gr_task_mix"] or "released"
    if mix not in TASK_MIXES:
        raise SettingError(f"gr_task_mix must be one of {', '.join(TASK_MIXES)}, got '{mix}'")
    return mix


def row_token_mean(token_loss, valid, row_weight):
    """Mean over the valid tokens of ``token_loss [R, T]``, each row's tokens weighted by
    ``row_weight [R]`` (a mixture step's loss: its tokens' mean, per-task weights applied)."""
    valid = valid.to(token_loss.dtype)
    return (token_loss * valid * row_weight[:, None]).sum() / valid.sum().clamp_min(1)


def stack_rows(per_task, task, value):
    """Row ``r`` of ``per_task[task[r]]``: ``per_task`` is a list of ``[R, S_t]`` tensors (the
    same rows built as each task), padded to a common width with ``value``."""
    stacked = torch.stack([F.pad(t, (0, max(x.shape[1] for x in per_task) - t.shape[1]), value=value)
                           for t in per_task])
    return stacked[task, torch.arange(len(task), device=task.device)]


def t5_beam_step(t5, src, mask, beam_size):
    """The ``step`` of :func:`constrained_beam_search` for a T5: the encoder runs once on
    ``src [B, S]``; the decoder advances one token per call with its KV cache, which is
    expanded to ``B * beam_size`` rows on the second call and reordered with the beams."""
    B = src.shape[0]
    encoder = t5.get_encoder()(input_ids=src, attention_mask=mask, return_dict=True)
    state = {"enc": encoder.last_hidden_state, "mask": mask, "cache": None}

    def step(tokens, reorder):
        if tokens is None:
            tokens = src.new_full((B, 1), t5.config.decoder_start_token_id)
        else:
            if state["enc"].shape[0] != tokens.shape[0]:   # first expansion to B * K rows
                state["enc"] = state["enc"].repeat_interleave(beam_size, 0)
                state["mask"] = state["mask"].repeat_interleave(beam_size, 0)
            state["cache"].reorder_cache(reorder)
        out, state["cache"] = cached_forward(
            t5, state["cache"], encoder_outputs=BaseModelOutput(last_hidden_state=state["enc"]),
            attention_mask=state["mask"], decoder_input_ids=tokens)
        return torch.log_softmax(out.logits[:, -1].float(), dim=-1)

    return step


class SemanticIdModelMixin:
    """Semantic-ID plumbing shared by all generative models: pre-stage wiring, code tables and
    the task mixture."""

    @classmethod
    def check_settings(cls, config):
        """Raise :class:`SettingError` for settings this model cannot use; the runner calls it
        before any data is loaded or any pre-stage runs."""
        from recbole_macrec.quantization.train import QuantizerParams

        beam, topk = int(config["beam_size"]), max(config["topk"])
        if beam < topk:
            raise SettingError(f"beam_size={beam} is smaller than the largest top-k ({topk}): "
                               f"the evaluator would rank items the beam never scored")
        task_mix_setting(config)
        if (config["sid_method"] or "import") != "import":
            QuantizerParams.from_config(config, config["sid_method"])

    def task_mixture(self):
        """``[(task, kind)]`` of the tasks a mixture epoch holds (``kind``: ``"seq"``, one row per
        training row, or ``"item"``, one row per catalogue item), or None with
        ``gr_task_mix: per_batch``."""
        if self.task_mix != "released":
            return None
        return [(task, self.task_kind(task)) for task in self.mixture_tasks]

    @classmethod
    def prepare_data(cls, config):
        """Run (or reuse) the pre-stage and point RecBole at the dataset with ``<view>_sid``."""
        from recbole_macrec.semantic_ids import build_semantic_ids, sid_field

        folder = build_semantic_ids(config, config["sid_method"])
        config["data_path"] = folder
        fields = [sid_field(v) for v in (config["gr_views"] or config["sid_views"])]
        load_col = config["load_col"]
        if load_col is not None:
            item_cols = list(load_col.get("item") or [config["ITEM_ID_FIELD"]])
            load_col["item"] = item_cols + [f for f in fields if f not in item_cols]
        getLogger().info(f"semantic IDs from {folder}: fields {fields}")

    def load_code_tables(self, dataset, views):
        """``{view: [n_items, L]}`` long codes by internal item id; validates them."""
        from recbole_macrec.semantic_ids import sid_field

        item_feat = dataset.get_item_feature()
        tables = {}
        for view in views:
            field = sid_field(view)
            if field not in item_feat.interaction:
                raise ValueError(f"dataset '{dataset.dataset_name}' has no item feature '{field}': "
                                 f"run the semantic-ID pre-stage (python -m recbole_macrec.semantic_ids)")
            raw = item_feat[field].float()
            codes = raw.round().long()
            if not torch.equal(codes.float(), raw) or (codes[1:] < 0).any():
                raise ValueError(f"item feature '{field}' holds non-integer or negative codes "
                                 f"(was it normalised? set normalize_all: False)")
            if len(torch.unique(codes[1:], dim=0)) != len(codes) - 1:
                raise ValueError(f"item feature '{field}': two items share a semantic ID (or an item "
                                 f"has no code); resolve collisions in the pre-stage")
            tables[view] = codes
        return tables


class GenerativeRecommender(SemanticIdModelMixin, SequentialRecommender):
    """T5 over semantic IDs. Subclasses set ``tasks`` (names from :data:`TASKS`) and may add losses."""

    input_type = InputType.POINTWISE

    @classmethod
    def check_settings(cls, config):
        super().check_settings(config)
        views = list(config["gr_views"] or config["sid_views"] or [])
        tasks = list(config["gr_tasks"] or [])
        for task in tasks:
            if task not in TASKS:
                raise SettingError(f"unknown task '{task}' in gr_tasks (known: {', '.join(TASKS)})")
            if (TASKS[task][0] == RANDOM or max(TASKS[task][0], TASKS[task][2]) >= 1) and len(views) < 2:
                raise SettingError(f"task '{task}' needs two views, gr_views = {views}")
        unknown = set(config["gr_task_weights"] or {}) - set(tasks)
        if unknown:
            raise SettingError(f"gr_task_weights names {sorted(unknown)}, which are not in gr_tasks {tasks}")

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        type(self).check_settings(config)
        self.views = list(config["gr_views"] or config["sid_views"])
        self.tasks = list(config["gr_tasks"])
        weights = config["gr_task_weights"] or {}
        self.task_weights = {t: float(weights.get(t, 1.0)) for t in self.tasks}
        self.mixture_tasks = [t for t in self.tasks if self.task_weights[t] != 0]
        self.task_mix = task_mix_setting(config)
        self.pack_tasks = config["gr_pack_tasks"] is not False
        self.beam_size = int(config["beam_size"])
        self.inference_views = list(config["gr_inference_views"] or self.views)

        # Every known task keeps its prompt token, so that switching tasks off (ablations) leaves
        # the vocabulary, and hence the initial weights, unchanged.
        self.vocab = SemanticIdVocab(self.load_code_tables(dataset, self.views), list(TASKS))
        for view in self.views:
            self.register_buffer(f"_tokens_{view}", self.vocab.item_token_table(view), persistent=False)
        self.tries = {}
        self.t5 = T5ForConditionalGeneration(T5Config(
            vocab_size=self.vocab.size, d_model=config["d_model"], d_kv=config["d_kv"],
            d_ff=config["d_ff"], num_layers=config["num_layers"],
            num_decoder_layers=config["num_decoder_layers"], num_heads=config["num_heads"],
            dropout_rate=config["dropout_rate"], feed_forward_proj=config["feed_forward_proj"] or "relu",
            pad_token_id=PAD, eos_token_id=EOS, decoder_start_token_id=PAD,
        ))

    # ---- token construction (all on the device) -------------------------------------------
    def item_tokens(self, view, items):
        """``[..., L]`` tokens of item ids ``[...]`` in ``view``."""
        return getattr(self, f"_tokens_{view}")[items]

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
        src = torch.cat([tok.new_full((B, 1), self.vocab.task_ids[task]), tok, tok.new_full((B, 1), EOS)], 1)
        return src, src.ne(PAD)

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
        return self.item_source(view, interaction[self.POS_ITEM_ID], task)[0]

    def task_batch(self, task, interaction, max_len=None):
        """``(source, mask, target)`` of ``task`` for a RecBole batch (``max_len``: its longest
        history, if known). A RANDOM task draws each row's source view (torch's RNG: seeded runs
        repeat) and targets the other view."""
        src_view, kind, tgt_view = TASKS[task]
        items = interaction[self.POS_ITEM_ID]
        if src_view != RANDOM:
            src = self.task_source(self.views[src_view], kind, interaction, task, max_len)
            return src, src.ne(PAD), self.target_tokens(self.views[tgt_view], items)
        from_view = (torch.rand(len(items), device=items.device) < 0.5).long()
        sources = [self.task_source(view, kind, interaction, task, max_len) for view in self.views[:2]]
        src = stack_rows(sources, from_view, PAD)
        targets = [self.target_tokens(view, items) for view in self.views[:2]]
        return src, src.ne(PAD), stack_rows(targets, 1 - from_view, IGNORE)

    # ---- training ----------------------------------------------------------------------------
    def task_groups(self, tasks):
        """Tasks that share one forward pass: those with the same kind of source (a history or
        one item, so similar widths) when ``gr_pack_tasks``, else one task each."""
        if not self.pack_tasks:
            return [[task] for task in tasks]
        groups = {}
        for task in tasks:
            groups.setdefault(TASKS[task][1], []).append(task)
        return list(groups.values())

    def seq2seq_losses(self, batches):
        """Mean token cross-entropy ``[len(batches)]`` of each ``(src [B_i, S_i], mask, target
        [B_i, L_i + 1])`` in ``batches``, from one forward pass over their stacked rows."""
        src = pad_cat([b[0] for b in batches], PAD)
        target = pad_cat([b[2] for b in batches], IGNORE)
        out = self.t5(input_ids=src, attention_mask=src.ne(PAD),
                      decoder_input_ids=self.t5._shift_right(target), return_dict=True)
        token_loss = F.cross_entropy(out.logits.float().transpose(1, 2), target, ignore_index=IGNORE,
                                     reduction="none")
        return segment_token_means(token_loss, target.ne(IGNORE), [len(b[0]) for b in batches])

    def task_losses(self, interaction):
        """``{task: weighted loss}`` for the configured tasks."""
        losses = {}
        tasks = [task for task in self.tasks if self.task_weights[task] != 0]
        max_len = int(interaction[self.ITEM_SEQ_LEN].max())   # one host sync for all history tasks
        for group in self.task_groups(tasks):
            means = self.seq2seq_losses([self.task_batch(task, interaction, max_len) for task in group])
            for task, loss in zip(group, means):
                losses[task] = self.task_weights[task] * loss
        return losses

    def mixture_batch(self, interaction, max_len):
        """``(source, mask, target, weight [R])`` of a mixture step: row ``r`` built as task
        ``mixture_tasks[interaction[TASK_FIELD][r]]``."""
        task = interaction[TASK_FIELD]
        built = [self.task_batch(t, interaction, max_len) for t in self.mixture_tasks]
        src = stack_rows([b[0] for b in built], task, PAD)
        target = stack_rows([b[2] for b in built], task, IGNORE)
        weights = torch.tensor([self.task_weights[t] for t in self.mixture_tasks], device=task.device)
        return src, src.ne(PAD), target, weights[task]

    def mixture_losses(self, interaction):
        """``{"tasks": mean target-token cross-entropy of the step (task weights applied)}`` for a
        batch of :class:`TaskMixtureLoader` (one forward pass over all its rows)."""
        max_len = max(1, int(interaction[self.ITEM_SEQ_LEN].max()))   # one host sync
        src, mask, target, weight = self.mixture_batch(interaction, max_len)
        out = self.t5(input_ids=src, attention_mask=mask,
                      decoder_input_ids=self.t5._shift_right(target), return_dict=True)
        token_loss = F.cross_entropy(out.logits.float().transpose(1, 2), target, ignore_index=IGNORE,
                                     reduction="none")
        return {"tasks": row_token_mean(token_loss, target.ne(IGNORE), weight)}

    def calculate_loss(self, interaction):
        if TASK_FIELD in interaction:
            return sum(self.mixture_losses(interaction).values())
        return sum(self.task_losses(interaction).values())

    # ---- scoring and decoding ----------------------------------------------------------------
    def trie(self, view):
        if view not in self.tries:
            self.tries[view] = CodeTrie.for_view(self.vocab, view, getattr(self, f"_tokens_{view}").device)
        return self.tries[view]

    def decode_task(self, view):
        """The task whose target is ``view`` from a history in the same view (seqrec/seqimage)."""
        index = self.views.index(view)
        for task in self.tasks:
            src, kind, tgt = TASKS[task]
            if kind == "seq" and src == index and tgt == index:
                return task
        raise ValueError(f"no history -> next item task for view '{view}' in gr_tasks {self.tasks}")

    def beam_search(self, interaction, view):
        """Top ``beam_size`` items ``[B, K]`` and their scores ``[B, K]``: mean log-probability
        of the item's L tokens and the eos after them (transformers' ``sequences_scores``)."""
        src, mask = self.history_source(view, interaction[self.ITEM_SEQ],
                                        interaction[self.ITEM_SEQ_LEN], self.decode_task(view))
        step = t5_beam_step(self.t5, src, mask, self.beam_size)
        return constrained_beam_search(step, src.shape[0], self.trie(view), self.beam_size, EOS)

    def teacher_forced_scores(self, interaction, view, items):
        """Mean log-probability ``[B]`` of ``items [B]``'s L tokens and the eos after them, given
        each row's history in ``view``: the quantity beam search ranks by."""
        src, mask = self.history_source(view, interaction[self.ITEM_SEQ],
                                        interaction[self.ITEM_SEQ_LEN], self.decode_task(view))
        target = self.target_tokens(view, items)
        logits = self.t5(input_ids=src, attention_mask=mask,
                         decoder_input_ids=self.t5._shift_right(target), return_dict=True).logits
        logp = torch.log_softmax(logits.float(), dim=-1).gather(2, target[..., None])[..., 0]
        return logp.mean(dim=1)

    def fuse(self, per_view, interaction):
        """Combine ``{view: (items, scores)}`` into ``[B, n_items]``; single view by default."""
        (items, scores), = per_view.values()
        return scores_to_matrix(items, scores, self.n_items)

    @torch.no_grad()
    def full_sort_predict(self, interaction):
        """``[B, n_items]``: beam scores at the items beam search returned, -inf elsewhere."""
        per_view = {view: self.beam_search(interaction, view) for view in self.inference_views}
        return self.fuse(per_view, interaction)

    def predict(self, interaction):
        """Teacher-forced score ``[B]`` of ``interaction[ITEM_ID]`` (first inference view)."""
        return self.teacher_forced_scores(interaction, self.inference_views[0],
                                          interaction[self.ITEM_ID])
