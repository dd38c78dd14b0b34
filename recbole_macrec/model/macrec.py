"""MACRec (Zhang et al., AAAI 2026): multi-aspect cross-modal quantisation for generative recommendation.

Two views' semantic IDs (text, image; or any two by ``gr_views``: v1, v2) train one T5 on six
tasks: seqrec / seqrec_v2 (history -> next item, same view), item_v1_to_v2 / item_v2_to_v1 (an
item's ID in one view -> the other view: explicit item-level alignment) and seqrec_v1_to_v2 /
seqrec_v2_to_v1 (history in one view -> next item in the other: explicit sequence-level
alignment); the released names (seqimage, item2image, ...) are accepted. With
``gr_task_mix: released`` an epoch holds every training row once per history task and every
catalogue item once per item task, shuffled together (the released fine-tuning). Implicit
alignment: InfoNCE between mean-pooled encoder states of an item's two IDs. Inference: beam search
once per view, then fusion.
"""
import torch

from recbole_macrec.data.device_loader import TASK_FIELD
from recbole_macrec.errors import SettingError
from recbole_macrec.model.beam_search import scores_to_matrix
from recbole_macrec.model.encoder_decoder import TASKS, EncoderDecoderRecommender
from recbole_macrec.model.packing import pad_cat, stack_rows
from recbole_macrec.model.semantic_id_recommender import model_views
from recbole_macrec.model.vocab import PAD
from recbole_macrec.quantization.losses import info_nce

FUSIONS = ("published", "mean")


def implicit_alignment_loss(a, b, temperature, bidirectional=True):
    """InfoNCE between paired rows of ``a`` and ``b`` ``[B, d]`` (L2-normalised); both
    directions averaged, or ``a -> b`` only (the released code's variant)."""
    if bidirectional:
        return info_nce(a, b, temperature, both_directions=True) / 2
    return info_nce(a, b, temperature)


def published_fusion(items_a, scores_a, items_b, scores_b, n_items):
    """Union of two beam lists ``[B, K]``: an item in both gets ``(s_a + s_b) / 2 + 1``, an item in
    one list keeps its own score. Returns ``[B, n_items]`` (-inf for items in neither list)."""
    a = scores_to_matrix(items_a, scores_a, n_items)
    b = scores_to_matrix(items_b, scores_b, n_items)
    both = torch.isfinite(a) & torch.isfinite(b)
    return torch.where(both, (a + b) / 2 + 1, torch.maximum(a, b))


def two_views_message(model, config, views):
    """What to set when ``model`` is given ``views`` (not two)."""
    where = f"gr_views = {list(config['gr_views'])}" if config["gr_views"] else f"sid_views = {views}"
    second = "collab" if "collab" not in views else "text"
    example = ",".join((views[:1] or ["text"]) + [second])
    text = (f"{model} needs exactly two item views, and {where} gives {len(views)}. Name two in sid_views "
            f"(and gr_views, if set), e.g. --sid_views=\"[{example}]\" (collab: item factors computed from the "
            f"training interactions; text: from the .item fields in text_view_fields)")
    if config["sid_method"] == "import":
        text += (", with --sid_method=macrec to train codes for both (sid_method: import reads published "
                 "codes, which must exist for both views)")
    return text + "; or --model=TIGER for one view"


class MACRec(EncoderDecoderRecommender):
    @classmethod
    def check_settings(cls, config):
        views = model_views(config)
        if len(views) != 2:   # before the tasks' own checks: this message says what to set
            raise SettingError(two_views_message(cls.__name__, config, views))
        super().check_settings(config)
        if config["fusion"] not in FUSIONS:
            raise SettingError(f"fusion must be one of {FUSIONS}, got '{config['fusion']}'")

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.implicit_weight = float(config["implicit_weight"])
        self.implicit_temperature = float(config["implicit_temperature"])
        self.implicit_bidirectional = config["implicit_bidirectional"] is not False
        self.fusion = config["fusion"]

    def pooled_states(self, tokens):
        """Mean-pooled encoder states ``[N, d]`` of token rows ``[N, S]`` (pad = 0), one pass."""
        mask = tokens.ne(PAD)
        states = self.encoder_hidden_states(tokens, mask)
        return (states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)

    def pooled_item_states(self, items):
        """Mean-pooled encoder states ``[2, B, d]`` of ``items [B]``' IDs (tokens + eos) in both
        views, from one encoder pass."""
        src = pad_cat([self.target_tokens(view, items) for view in self.views], PAD)
        return self.pooled_states(src).view(len(self.views), len(items), -1)

    def implicit_loss(self, interaction):
        """``gr_task_mix: per_batch``: over the batch's distinct target items, text ID vs image ID."""
        items = torch.unique(interaction[self.POS_ITEM_ID])  # repeated items would be false negatives
        a, b = self.pooled_item_states(items).float()
        return implicit_alignment_loss(a, b, self.implicit_temperature, self.implicit_bidirectional)

    def task_mixture(self):
        """The released mixture; when the implicit term is on but no item task trains (w/o
        explicit), it still gets its pairs: one ``"pair"`` row per catalogue item per direction,
        as the two item tasks would give, which carry no generation loss."""
        entries = super().task_mixture()
        if entries is None or self.implicit_weight <= 0 or any(kind == "item" for _, kind in entries):
            return entries
        return entries + [("item_v1_to_v2", "pair"), ("item_v2_to_v1", "pair")]

    def mixture_implicit_loss(self, interaction, n_item_rows):
        """``gr_task_mix: released``: over the step's ``n_item_rows`` item rows (item tasks or
        implicit pairs), as the released code does: each row's source ID (the item in the source
        view, + eos) against its target ID (in the other view)."""
        task = interaction[TASK_FIELD]
        entries = self.task_mixture()
        is_item = torch.tensor([kind != "seq" for _, kind in entries], device=task.device)
        source_view = torch.tensor([TASKS[t][0] if kind != "seq" else 0 for t, kind in entries],
                                   device=task.device)
        rows = torch.argsort((~is_item[task]).to(torch.int8), stable=True)[:n_item_rows]
        items, src = interaction[self.POS_ITEM_ID][rows], source_view[task[rows]]
        ids = stack_rows([self.target_tokens(view, items) for view in self.views[:2]], src, PAD)
        other = stack_rows([self.target_tokens(view, items) for view in self.views[:2]], 1 - src, PAD)
        a, b = self.pooled_states(pad_cat([ids, other], PAD)).float().view(2, n_item_rows, -1)
        return implicit_alignment_loss(a, b, self.implicit_temperature, self.implicit_bidirectional)

    def task_losses(self, interaction):
        losses = super().task_losses(interaction)
        if self.implicit_weight > 0:
            losses["implicit"] = self.implicit_weight * self.implicit_loss(interaction)
        return losses

    def mixture_losses(self, interaction):
        losses, tokens = super().mixture_losses(interaction)
        if self.implicit_weight > 0:
            kinds = torch.tensor([kind != "seq" for _, kind in self.task_mixture()],
                                 device=interaction[TASK_FIELD].device)
            n_item_rows = int(kinds[interaction[TASK_FIELD]].sum())
            if n_item_rows > 1:   # InfoNCE needs negatives
                losses["implicit"] = self.implicit_weight * self.mixture_implicit_loss(interaction, n_item_rows)
        return losses, tokens

    def fuse(self, per_view, interaction):
        if len(per_view) == 1:
            return super().fuse(per_view, interaction)
        (items_a, scores_a), (items_b, scores_b) = per_view.values()
        if self.fusion == "published":
            return published_fusion(items_a, scores_a, items_b, scores_b, self.n_items)
        return self.mean_fusion(per_view, interaction)

    def mean_fusion(self, per_view, interaction):
        """Plain mean of both views' scores over the union of the two lists; the view that did not
        return an item scores it by teacher forcing."""
        union = torch.cat([items for items, _ in per_view.values()], dim=1)   # [B, 2K], -1 = none
        safe = union.clamp_min(1)
        B, width = union.shape
        rows = interaction[torch.arange(B, device=union.device).repeat_interleave(width)]
        total = 0
        for view in per_view:
            total = total + self.teacher_forced_scores(rows, view, safe.view(-1)).view(B, width)
        scores = torch.where(union >= 0, total / len(per_view), torch.full_like(total, float("-inf")))
        return scores_to_matrix(union, scores, self.n_items)


class MQL4GRec(MACRec):
    """MQL4GRec (Zhai et al., ICLR 2025) without its large-scale pre-training.

    Separate RQ-VAEs per view (no cross-modal terms), tasks seqrec, seqrec_v2, item_v1_to_v2,
    item_v2_to_v1 and seqrec_cross (the released fusionseqrec: a history in one view -> the next
    item in the other, the direction drawn per row), no implicit alignment, the same fusion. The original's
    pre-training on millions of items from other domains is NOT included.
    """
