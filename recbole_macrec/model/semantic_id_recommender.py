"""Base of every semantic-ID recommender (TIGER, MACRec, MQL4GRec, LCRec).

An item is L code tokens per view. A task maps a source (a history, or one item) to a target
item's tokens; training is the task mixture, decoding the shared constrained beam search (or
exact scoring) over a trie per view. A backbone (``encoder_decoder.py``: T5; ``decoder_only.py``:
a causal LM) says how a task's rows are built and scored: the methods and attributes of
:class:`SemanticIdRecommender` marked "backbone contract", which raise ``NotImplementedError``
here.
"""
import torch
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType

from recbole_macrec.data.atomic import sid_field
from recbole_macrec.data.device_loader import TASK_FIELD
from recbole_macrec.errors import SettingError
from recbole_macrec.model.beam_search import (CodeTrie, constrained_beam_search, decoder_rows, exact_scores,
                                              scores_to_matrix)
from recbole_macrec.model.packing import pad_cat, row_token_mean, segment_token_means, stack_rows
from recbole_macrec.model.vocab import SemanticIdVocab

TASK_MIXES = ("released", "per_batch")
FULL_SORTS = ("beam", "exact")


def full_sort_setting(config):
    """``gr_full_sort``: ``beam`` (constrained beam search, ``beam_size`` items per view) or
    ``exact`` (every item scored; each view's exact top ``beam_size``, fused as the beams are)."""
    mode = config["gr_full_sort"]
    if mode not in FULL_SORTS:
        raise SettingError(f"gr_full_sort must be one of {', '.join(FULL_SORTS)}, got '{mode}'")
    return mode


def task_mix_setting(config):
    """``gr_task_mix``: ``released`` (every epoch: each history task over every training row,
    each item task over every catalogue item, shuffled together; loss = mean over a step's target
    tokens) or ``per_batch`` (every task built from each RecBole batch; loss = sum of per-task
    means)."""
    mix = config["gr_task_mix"]
    if mix not in TASK_MIXES:
        raise SettingError(f"gr_task_mix must be one of {', '.join(TASK_MIXES)}, got '{mix}'")
    return mix


def model_views(config):
    """The views a semantic-ID model reads: ``gr_views``, or all of ``sid_views``."""
    return list(config["gr_views"] or config["sid_views"] or [])


def load_code_tables(dataset, views):
    """``{view: [n_items, L]}`` long codes by internal item id, from the ``<view>_sid`` item
    features; raises when a view's codes are missing, not integers, or not unique."""
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


class SemanticIdRecommender(SequentialRecommender):
    """Tokens, tries, the task mixture, decoding and fusion; a backbone subclass supplies the
    network (see the module's docstring)."""

    input_type = InputType.POINTWISE

    @classmethod
    def check_settings(cls, config):
        """Raise :class:`SettingError` for settings this model cannot use; the runner calls it
        before any data is loaded or any pre-stage runs (the pre-stage's own settings:
        :func:`recbole_macrec.semantic_ids.check_settings`)."""
        beam, topk = int(config["beam_size"]), max(config["topk"])
        if beam < topk:
            raise SettingError(f"beam_size={beam} is smaller than the largest top-k ({topk}): "
                               f"the evaluator would rank items the beam never scored")
        mix = task_mix_setting(config)
        full_sort_setting(config)
        negatives = (config["train_neg_sample_args"] or {}).get("distribution", "none")
        if mix == "released" and (config["transform"] is not None or negatives not in (None, "none")):
            raise SettingError("gr_task_mix: released builds its epochs on the device, which needs no "
                               "negative sampling (train_neg_sample_args) and no transform; use gr_task_mix: "
                               "per_batch")

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        type(self).check_settings(config)
        self.views = model_views(config)
        self.inference_views = list(config["gr_inference_views"] or self.views)
        self.task_mix = task_mix_setting(config)
        self.pack_tasks = config["gr_pack_tasks"] is not False
        self.beam_size = int(config["beam_size"])
        self.full_sort = full_sort_setting(config)
        self.exact_rows = int(config["gr_exact_rows"])
        self.exact_max_cost = float(config["gr_exact_max_cost"])
        self.exact_force = bool(config["gr_exact_force"])
        self.tries = {}

    # ---- the backbone contract ---------------------------------------------------------------
    row_pads = None   # backbone contract: the padding value of each tensor task_rows returns
    eos_id = None     # backbone contract: the end token's id (decoding scores it after a full item)

    def task_rows(self, task, interaction, max_len=None):
        """Backbone contract: the rows of ``task`` for a batch.

        Args:
            task: a task name this model trains.
            interaction: a batch with the history (``ITEM_SEQ``, ``ITEM_SEQ_LEN``) and the target
                item (``POS_ITEM_ID``) per row.
            max_len: the batch's longest history, when the caller knows it (else read from it).
        Returns:
            a tuple of row-aligned ``[B, S_i]`` long tensors (source and target, however the
            backbone lays them out), each padded with the matching ``row_pads`` value.
        """
        raise NotImplementedError

    def token_losses(self, rows):
        """Backbone contract: per-token training loss of rows built by :meth:`task_rows` (of any
        tasks, stacked and padded with ``row_pads``).

        Returns:
            ``(token cross-entropy [R, T], which tokens count [R, T] bool)``.
        """
        raise NotImplementedError

    def beam_step(self, interaction, view):
        """Backbone contract: the network's side of decoding ``view`` for a batch.

        Returns:
            ``(step, batch size)``: ``step(tokens, reorder)`` as :func:`constrained_beam_search`
            calls it (also called by :func:`exact_scores`, with any number of rows per user).
        """
        raise NotImplementedError

    def teacher_forced_scores(self, interaction, view, items):
        """Backbone contract: what decoding ranks by, for given items.

        Args:
            items: ``[B]`` internal item ids, one per row of ``interaction``.
        Returns:
            ``[B]``: the mean log-probability of each item's L code tokens in ``view`` and the eos
            after them, given the row's history.
        """
        raise NotImplementedError

    def task_kind(self, task):
        """Backbone contract: ``"seq"`` (a task with one row per training row: a history as
        source) or ``"item"`` (one row per catalogue item: the item itself as source)."""
        raise NotImplementedError

    # ---- tasks and tokens ----------------------------------------------------------------------
    def set_tasks(self, tasks, weights=None):
        """The tasks trained (names this model knows) and their loss weights (default 1.0); tasks
        of weight 0 are left out of training."""
        weights = weights or {}
        self.tasks = list(tasks)
        self.task_weights = {t: float(weights.get(t, 1.0)) for t in self.tasks}
        self.mixture_tasks = [t for t in self.tasks if self.task_weights[t] != 0]

    def set_vocab(self, code_tables, task_names, first_id=2):
        """The token vocabulary of ``code_tables`` (``{view: [n_items, L]}``) with one prompt token
        per name in ``task_names``; item token tables become device buffers."""
        self.vocab = SemanticIdVocab(code_tables, task_names, first_id)
        for view in code_tables:
            self.register_buffer(f"_tokens_{view}", self.vocab.item_token_table(view), persistent=False)

    def item_tokens(self, view, items):
        """``[..., L]`` tokens of item ids ``[...]`` in ``view``."""
        return getattr(self, f"_tokens_{view}")[items]

    # ---- training ----------------------------------------------------------------------------
    def task_mixture(self):
        """``[(task, kind)]`` of the entries a mixture epoch holds (kind ``"seq"``: one row per
        training row; ``"item"``: one per catalogue item; ``"pair"``: like ``"item"``, for a loss on
        the item's IDs alone, no generation), or None with ``gr_task_mix: per_batch``."""
        if self.task_mix != "released":
            return None
        return [(task, self.task_kind(task)) for task in self.mixture_tasks]

    def task_groups(self, tasks):
        """Tasks that share one forward pass: those with the same kind of source (a history or
        one item, so similar widths) when ``gr_pack_tasks``, else one task each."""
        if not self.pack_tasks:
            return [[task] for task in tasks]
        groups = {}
        for task in tasks:
            groups.setdefault(self.task_kind(task), []).append(task)
        return list(groups.values())

    def task_losses(self, interaction):
        """``gr_task_mix: per_batch``: ``{task: weighted mean target-token cross-entropy}`` of
        every task built from the RecBole batch ``interaction``."""
        losses = {}
        max_len = int(interaction[self.ITEM_SEQ_LEN].max())   # one host sync for all history tasks
        for group in self.task_groups(self.mixture_tasks):
            built = [self.task_rows(task, interaction, max_len) for task in group]
            rows = tuple(pad_cat([b[i] for b in built], pad) for i, pad in enumerate(self.row_pads))
            token_loss, valid = self.token_losses(rows)
            means = segment_token_means(token_loss, valid, [len(b[0]) for b in built])
            for task, loss in zip(group, means):
                losses[task] = self.task_weights[task] * loss
        return losses

    def mixture_losses(self, interaction):
        """``({"tasks": mean target-token cross-entropy of the step (task weights applied)},
        target tokens)`` for a batch of :class:`TaskMixtureLoader`: row ``r`` built as entry
        ``task_mixture()[interaction[TASK_FIELD][r]]``, all rows in one forward pass. Rows of an
        entry that trains no generation (kind ``"pair"``) carry no target token."""
        max_len = max(1, int(interaction[self.ITEM_SEQ_LEN].max()))   # one host sync
        task = interaction[TASK_FIELD]
        entries = self.task_mixture()
        built = [self.task_rows(t, interaction, max_len) for t, _ in entries]
        rows = tuple(stack_rows([b[i] for b in built], task, pad) for i, pad in enumerate(self.row_pads))
        generates = [kind != "pair" for _, kind in entries]
        if not all(generates):
            label = len(rows) - 1   # the targets: the last of a task's rows
            silent = ~torch.tensor(generates, device=task.device)[task]
            rows = rows[:label] + (rows[label].masked_fill(silent[:, None], self.row_pads[label]),)
        token_loss, valid = self.token_losses(rows)
        weights = torch.tensor([self.task_weights.get(t, 0.0) for t, _ in entries], device=task.device)
        return {"tasks": row_token_mean(token_loss, valid, weights[task])}, valid.sum()

    def calculate_loss_and_weight(self, interaction):
        """``(loss, weight)``: the step's loss and what it averages over (target tokens under the
        released mixture, rows under ``per_batch``), so that gradient accumulation can weight
        micro-batches as one pass over their union would."""
        if self.task_mix == "released":
            if TASK_FIELD not in interaction:
                raise ValueError("gr_task_mix: released trains on the task mixture's batches "
                                 "(GenerativeTrainer.batches_of), not on RecBole's loader's")
            losses, tokens = self.mixture_losses(interaction)
            return sum(losses.values()), tokens
        return sum(self.task_losses(interaction).values()), len(interaction)

    def calculate_loss(self, interaction):
        return self.calculate_loss_and_weight(interaction)[0]

    def validation_task(self):
        """The task whose loss the validation loss is (the released fine-tuning validates seqrec)."""
        return "seqrec"

    def validation_loss_terms(self, interaction):
        """``(sum, count)`` of the target-token cross-entropy of :meth:`validation_task` on
        ``interaction`` (history and held-out item)."""
        token_loss, valid = self.token_losses(self.task_rows(self.validation_task(), interaction))
        return (token_loss * valid).sum(), valid.sum()

    # ---- scoring and decoding ----------------------------------------------------------------
    def trie(self, view):
        if view not in self.tries:
            self.tries[view] = CodeTrie.for_view(self.vocab, view, getattr(self, f"_tokens_{view}").device)
        return self.tries[view]

    def beam_search(self, interaction, view):
        """Top ``beam_size`` items ``[B, K]`` and their scores ``[B, K]`` in ``view``: mean
        log-probability of the item's L tokens and the eos after them (transformers'
        ``sequences_scores``)."""
        step, batch_size = self.beam_step(interaction, view)
        return constrained_beam_search(step, batch_size, self.trie(view), self.beam_size, self.eos_id)

    def exact_cost(self, view):
        """``(decoder rows per user of exact scoring, of beam search)`` in ``view``."""
        trie = self.trie(view)
        return decoder_rows(trie), 1 + self.beam_size * trie.num_levels

    def check_exact_cost(self):
        """Refuse, before any training, exact scoring far costlier than the beam's: more than
        ``gr_exact_max_cost`` times its decoder rows per user, unless ``gr_exact_force``."""
        for view in self.inference_views:
            exact, beam = self.exact_cost(view)
            if exact > self.exact_max_cost * beam and not self.exact_force:
                raise SettingError(
                    f"exact scoring of view '{view}' decodes {exact} rows per user, {exact / beam:.0f}x the "
                    f"beam's {beam} (beam_size {self.beam_size}), more than gr_exact_max_cost="
                    f"{self.exact_max_cost:g}: set gr_exact_force: True to run it anyway, or gr_full_sort: beam")

    @torch.no_grad()
    def exact_item_scores(self, interaction, view):
        """``[B, n_items]``: every item's score in ``view`` (what beam search ranks by), users in
        chunks so that a decoder step holds at most ``gr_exact_rows`` rows."""
        trie = self.trie(view)
        widest = max(int((t.child >= 0).sum()) for t in trie.levels)
        chunk = max(1, self.exact_rows // widest)
        out = []
        for rows in torch.arange(len(interaction), device=trie.levels[0].child.device).split(chunk):
            step, batch_size = self.beam_step(interaction[rows], view)
            out.append(exact_scores(step, batch_size, trie, self.eos_id, self.n_items))
        return torch.cat(out)

    def exact_top(self, interaction, view):
        """The exact counterpart of :meth:`beam_search`: the top ``beam_size`` items ``[B, K]`` of
        :meth:`exact_item_scores` and their scores (-1 / -inf past the catalogue's end)."""
        scores, items = self.exact_item_scores(interaction, view).topk(min(self.beam_size, self.n_items), dim=1)
        items = torch.where(torch.isfinite(scores), items, torch.full_like(items, -1))
        if items.shape[1] < self.beam_size:
            pad = self.beam_size - items.shape[1]
            items = torch.cat([items, items.new_full((len(items), pad), -1)], 1)
            scores = torch.cat([scores, scores.new_full((len(scores), pad), float("-inf"))], 1)
        return items, scores

    def decode(self, interaction, view, mode=None):
        """``(items, scores)`` ``[B, beam_size]`` of ``view`` by ``mode`` (default ``gr_full_sort``)."""
        if (mode or self.full_sort) == "exact":
            return self.exact_top(interaction, view)
        return self.beam_search(interaction, view)

    def fuse(self, per_view, interaction):
        """Combine ``{view: (items, scores)}`` into ``[B, n_items]``; single view by default."""
        (items, scores), = per_view.values()
        return scores_to_matrix(items, scores, self.n_items)

    @torch.no_grad()
    def full_sort_predict(self, interaction, mode=None):
        """``[B, n_items]``: the scores of the items each view's decoding returned (beam search,
        or with ``gr_full_sort: exact`` each view's exact top ``beam_size``), fused; -inf elsewhere."""
        per_view = {view: self.decode(interaction, view, mode) for view in self.inference_views}
        return self.fuse(per_view, interaction)

    def predict(self, interaction):
        """Teacher-forced score ``[B]`` of ``interaction[ITEM_ID]`` (first inference view)."""
        return self.teacher_forced_scores(interaction, self.inference_views[0], interaction[self.ITEM_ID])
