"""Train RQ-VAEs on item views and return per-view semantic IDs (before collision resolution).

Methods: ``rqvae`` (one RQ-VAE per view, TIGER), ``rqvae_sinkhorn`` (the same with its last
level assigned by Sinkhorn while training, as MQL4GRec's and LC-Rec's released RQ-VAEs do) and
``macrec`` (two views trained jointly with MACRec's per-level cross-modal InfoNCE and
reconstruction alignment). Codes are always extracted by nearest codeword, as all three released
code bases do.
"""
import time
from dataclasses import dataclass, field
from logging import getLogger

import numpy as np
import torch
from tqdm import tqdm

from recbole_macrec.errors import SettingError
from recbole_macrec.quantization.collisions import collision_rate
from recbole_macrec.quantization.kmeans import pseudo_labels
from recbole_macrec.quantization.losses import (
    RESIDUAL_NORM_FLOOR, cross_modal_level_loss, self_positive_level_loss, symmetric_info_nce)
from recbole_macrec.quantization.rqvae import RQVAE

METHODS = ("rqvae", "rqvae_sinkhorn", "macrec", "import")
TRAINED_METHODS = METHODS[:3]
CON_VARIANTS = ("paper", "same_item", "released", "none")
LEVEL_WEIGHTED_CON = ("paper", "same_item")   # the variants that read sid_con_weights
ALIGN_TARGETS = ("codeword_sum", "quantized")
COLLISION_STRATEGIES = ("reassign", "sinkhorn", "extra_level")
LR_SCHEDULES = ("constant", "linear")


def lr_factor(params, steps_per_epoch):
    """LR multiplier per optimiser step: linear warm-up over ``warmup_epochs``, then constant or
    linear decay to 0 at the last step (transformers' constant / linear schedules with warm-up,
    which LC-Rec's RQ-VAE trainer uses)."""
    warmup = params.warmup_epochs * steps_per_epoch
    total = params.epochs * steps_per_epoch

    def factor(step):
        if step < warmup:
            return step / warmup
        if params.lr_schedule == "constant":
            return 1.0
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


@dataclass
class QuantizerParams:
    num_levels: int = 4
    codebook_size: int = 256
    e_dim: int = 32
    encoder_layers: tuple = (2048, 1024, 512, 256, 128, 64)
    projection_dim: int = 768
    epochs: int = 1000
    batch_size: int = 2048
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    lr_schedule: str = "constant"
    warmup_epochs: int = 0
    beta: float = 0.25
    dropout: float = 0.0
    kmeans_iters: int = 100
    eval_step: int = 2
    pseudo_label_k: int = 512
    con_variant: str = "paper"
    con_weights: tuple = (0.0, 0.0, 0.1, 0.1)
    align_weight: float = 0.001
    align_target: str = "codeword_sum"
    temperature: float = 0.1
    sinkhorn_epsilon: float = 0.003
    sinkhorn_iters: int = 50
    collision: str = "reassign"
    collision_sinkhorn_rounds: int = 20
    dead_code_restart: bool = False

    @classmethod
    def from_config(cls, config, method="macrec"):
        if config["sid_con_positive"] is not None:
            raise SettingError("sid_con_positive was removed: sid_con_variant: paper takes positives from "
                             "the other view's clusters, sid_con_variant: released is the released code "
                             "(every anchor its own positive)")
        values = {}
        for name in cls.__dataclass_fields__:
            value = config[f"sid_{name}"]
            if value is not None:
                values[name] = tuple(value) if isinstance(value, list) else value
        params = cls(**values)
        params.validate(method)
        return params

    def validate(self, method="macrec"):
        """Clear errors, naming the setting, for values the pre-stage of ``method`` cannot use."""
        for name in ("num_levels", "codebook_size", "e_dim", "epochs", "batch_size", "eval_step",
                     "pseudo_label_k", "kmeans_iters"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SettingError(f"sid_{name} must be a positive integer, got {value!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise SettingError(f"sid_lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got "
                               f"'{self.lr_schedule}'")
        if isinstance(self.warmup_epochs, bool) or not isinstance(self.warmup_epochs, int) \
                or self.warmup_epochs < 0:
            raise SettingError(f"sid_warmup_epochs must be a non-negative integer, got {self.warmup_epochs!r}")
        if self.con_variant not in CON_VARIANTS:
            raise SettingError(f"sid_con_variant must be one of {', '.join(CON_VARIANTS)}, got "
                               f"'{self.con_variant}'")
        if self.align_target not in ALIGN_TARGETS:
            raise SettingError(f"sid_align_target must be one of {', '.join(ALIGN_TARGETS)}, got "
                               f"'{self.align_target}'")
        if self.collision not in COLLISION_STRATEGIES:
            raise SettingError(f"sid_collision must be one of {', '.join(COLLISION_STRATEGIES)}, got "
                               f"'{self.collision}'")
        if method == "macrec" and self.con_variant in LEVEL_WEIGHTED_CON:   # the only readers of the weights
            self.validate_con_weights()

    def validate_con_weights(self):
        if len(self.con_weights) > self.num_levels:
            raise SettingError(f"sid_con_weights has {len(self.con_weights)} entries but sid_num_levels is "
                               f"{self.num_levels}: a weight on level {self.num_levels} (0-based), which "
                               f"does not exist")
        if len(self.con_weights) < self.num_levels:
            raise SettingError(f"sid_con_weights has {len(self.con_weights)} entries for "
                               f"sid_num_levels={self.num_levels}: give one weight per level")
        if any(not isinstance(w, (int, float)) or isinstance(w, bool) or w < 0 for w in self.con_weights):
            raise SettingError(f"sid_con_weights must be non-negative numbers, got {list(self.con_weights)}")


@dataclass
class ViewCodes:
    codes: np.ndarray                  # [N, L] before resolution (nearest codeword per level)
    last_distances: np.ndarray         # [N, M] squared distance of the last residual to each codeword
    prev_distances: np.ndarray         # [N, M] the same at level L-2
    epoch: int                         # the epoch these codes come from (lowest collision rate)
    rate: float                        # their collision rate
    history: list = field(default_factory=list)


def build_models(views, params, method, device):
    """One RQ-VAE per view. ``rqvae_sinkhorn`` assigns its last level by Sinkhorn while training
    (MQL4GRec's and LC-Rec's released RQ-VAEs); only ``macrec`` has the released CrossRQVAE's
    Linear(in -> projection_dim) in front of the encoder."""
    sinkhorn_levels = (params.num_levels - 1,) if method == "rqvae_sinkhorn" else ()
    projection = params.projection_dim if method == "macrec" else 0
    return {
        name: RQVAE(x.shape[1], list(params.encoder_layers), params.e_dim, params.num_levels,
                    params.codebook_size, params.beta, params.dropout, projection, sinkhorn_levels,
                    params.sinkhorn_epsilon, params.sinkhorn_iters).to(device)
        for name, x in views.items()
    }


ENCODE_CHUNK = 65_536   # rows per encoder pass outside training


@torch.no_grad()
def encoder_outputs(model, x, chunk=ENCODE_CHUNK):
    """``model.encoder`` over every row of ``x``: ``[N, d_in] -> [N, d]``, ``chunk`` rows per pass.
    One pass over 10^6 items held the 2048-wide hidden layer of all of them at once (8 GB); up to
    ``chunk`` items it is exactly the single pass."""
    return torch.cat([model.encoder(x[start:start + chunk]) for start in range(0, len(x), chunk)])


@torch.no_grad()
def encode_all(model, x, batch_size, residuals=False, distance_levels=()):
    """Codes ``[N, L]`` of every row of ``x`` (nearest codeword on every level, as the released
    code extracts them); with ``residuals`` also the level input residuals ``[L, N, d]``; and the
    squared distances ``[N, M]`` of each level in ``distance_levels``. Only what is asked for is
    kept: at 10^6 items all levels' distances would be 4 GB."""
    model.eval()
    codes, kept, dists = [], [], {level: [] for level in distance_levels}
    for start in range(0, len(x), batch_size):
        out = model.quantizer(model.encoder(x[start:start + batch_size]), balanced=False)
        codes.append(out["codes"])
        if residuals:
            kept.append(out["residuals"])
        for level in distance_levels:
            dists[level].append(out["distances"][level].cpu())
    return (torch.cat(codes), torch.cat(kept, dim=1) if residuals else None,
            {level: torch.cat(d).numpy() for level, d in dists.items()})


def contrastive_parts(out_a, out_b, labels_a, labels_b, params, generator):
    """MACRec's cross-modal terms ``{name: weighted loss}`` for two views' RQ-VAE outputs.

    ``paper``: level ``l`` adds ``con_weights[l]`` x InfoNCE on the gradient-carrying residuals
    with positives from the other view's clusters. ``same_item``: the same levels and weights, but
    an item's positive is its own residual in the other view and the other items of the batch
    are the negatives (a reading of the paper that spreads items apart). ``released``: the
    released code's term exactly: self positives on the straight-through residuals of every
    level, averaged over the levels (so only level 0 trains anything). ``none``: no contrastive term. The alignment reads
    ``align_target``, whatever the variant: ``codeword_sum`` (the paper's formula: the sum of the
    chosen codewords, so it trains the codebooks) or ``quantized`` (the released code: the
    straight-through quantized vector, so it trains the encoder)."""
    parts = {}
    if params.con_variant in LEVEL_WEIGHTED_CON:
        for level, weight in enumerate(params.con_weights):
            if weight > 0:
                res_a, res_b = out_a["residuals_grad"][level], out_b["residuals_grad"][level]
                if params.con_variant == "paper":
                    loss = cross_modal_level_loss(res_a, res_b, labels_a, labels_b, params.temperature,
                                                  generator)
                else:
                    loss = symmetric_info_nce(res_a, res_b, params.temperature, RESIDUAL_NORM_FLOOR)
                parts[f"con{level}"] = weight * loss
    elif params.con_variant == "released":
        levels = range(params.num_levels)
        parts["con"] = sum(self_positive_level_loss(out_a["residuals"][level], out_b["residuals"][level],
                                                    params.temperature) for level in levels) / len(levels)
    if params.align_weight > 0:
        key = params.align_target
        parts["align"] = params.align_weight * symmetric_info_nce(out_a[key], out_b[key], params.temperature)
    return parts


def batch_loss(outputs, labels, idx, params, method, generator):
    """Total loss and its named parts for one batch (``outputs``: view -> RQVAE output; ``labels``:
    view -> pseudo-labels of all items, empty when the variant needs none; ``idx``: the batch's
    item rows)."""
    parts = {}
    for name, out in outputs.items():
        parts[f"{name}/recon"] = out["recon_loss"]
        parts[f"{name}/vq"] = out["vq_loss"]
    if method == "macrec":
        (a, out_a), (b, out_b) = outputs.items()
        labels_a, labels_b = (labels[a][idx], labels[b][idx]) if labels else (None, None)
        parts.update(contrastive_parts(out_a, out_b, labels_a, labels_b, params, generator))
    return sum(parts.values()), parts


def check_training_inputs(views, method, params):
    """The number of items; raises :class:`SettingError` for a method or setting the views cannot
    be trained with."""
    if method not in TRAINED_METHODS:
        raise SettingError(f"unknown training method '{method}' (expected {', '.join(TRAINED_METHODS)})")
    if method == "macrec" and len(views) != 2:
        raise SettingError(f"macrec needs exactly two views, got {list(views)}")
    n_items = len(next(iter(views.values())))
    if params.codebook_size > n_items:
        raise SettingError(f"sid_codebook_size={params.codebook_size} exceeds the {n_items} items: "
                         f"k-means cannot initialise the codebooks")
    return n_items


def train_epoch(models, x, labels, params, method, generator, optimizer, scheduler):
    """One epoch over every item in a random order (``generator``); returns each loss part's mean
    over the items."""
    n_items = len(next(iter(x.values())))
    for m in models.values():
        m.train()
    order = torch.randperm(n_items, generator=generator, device=generator.device)
    totals = {}
    for start in range(0, n_items, params.batch_size):
        idx = order[start:start + params.batch_size]
        outputs = {name: models[name](x[name][idx]) for name in models}
        loss, parts = batch_loss(outputs, labels, idx, params, method, generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        for k, v in parts.items():
            totals[k] = totals.get(k, 0.0) + v.item() * len(idx) / n_items
    return totals


def check_epoch(models, x, params, epoch, evaluated, restart, best, history, generator, optimizer, entry_facts):
    """After an epoch: each view's collision rate; a view's codes (and the distances collision
    resolution ranks by) kept in ``best`` when ``evaluated`` and lower than before; unused
    codewords restarted when ``restart``. Appends each view's record to ``history``; returns the
    rates."""
    rates = {}
    for name, model in models.items():
        codes, residuals, _ = encode_all(model, x[name], params.batch_size, residuals=restart)
        codes_np = codes.cpu().numpy()
        rates[name] = collision_rate(codes_np)
        entry = {"epoch": epoch, "collision_rate": rates[name], "epoch_s": entry_facts["epoch_s"],
                 **{k: v for k, v in entry_facts["totals"].items() if k.startswith(name + "/")}}
        if evaluated and (name not in best or rates[name] < best[name].rate):
            # distances only for a new best: the two levels collision resolution ranks by
            last, prev = params.num_levels - 1, max(params.num_levels - 2, 0)
            dists = encode_all(model, x[name], params.batch_size, distance_levels=(last, prev))[2]
            best[name] = ViewCodes(codes_np, dists[last], dists[prev], epoch, rates[name])
        if restart:
            entry["dead_codes_restarted"] = model.quantizer.restart_dead_codes(
                residuals, codes, generator, optimizer)
        history[name].append(entry)
    return rates


def train_quantizers(views, method, params, seed, device="cpu", show_progress=True):
    """Train on ``views`` (name -> ``[N, d]`` float32, rows aligned by item) and return, per view,
    the codes of the evaluated epoch (every ``eval_step`` epochs and the last) with the lowest
    collision rate (:class:`ViewCodes`)."""
    logger = getLogger()
    n_items = check_training_inputs(views, method, params)
    torch.manual_seed(seed)
    generator = torch.Generator(device=device).manual_seed(seed)
    x = {name: torch.as_tensor(v, dtype=torch.float32, device=device) for name, v in views.items()}
    labels = {}
    if method == "macrec" and params.con_variant == "paper":
        labels = {name: torch.as_tensor(pseudo_labels(v, params.pseudo_label_k, seed), device=device)
                  for name, v in views.items()}
    models = build_models(views, params, method, device)
    for name, model in models.items():
        model.quantizer.kmeans_init(encoder_outputs(model, x[name]), seed, params.kmeans_iters)
    optimizer = torch.optim.AdamW([p for m in models.values() for p in m.parameters()],
                                  lr=params.learning_rate, weight_decay=params.weight_decay)
    steps_per_epoch = -(-n_items // params.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(params, steps_per_epoch))
    best, history = {}, {name: [] for name in models}
    epochs = tqdm(range(params.epochs), desc=f"pre-stage {method}", ncols=100,
                  disable=not show_progress)
    for epoch in epochs:
        epoch_start = time.perf_counter()
        totals = train_epoch(models, x, labels, params, method, generator, optimizer, scheduler)
        facts = {"epoch_s": round(time.perf_counter() - epoch_start, 3), "totals": totals}
        evaluated = (epoch + 1) % params.eval_step == 0 or epoch == params.epochs - 1
        restart = params.dead_code_restart and epoch < params.epochs - 1
        if not (evaluated or restart):
            continue
        rates = check_epoch(models, x, params, epoch, evaluated, restart, best, history, generator, optimizer, facts)
        epochs.set_postfix_str(" ".join(f"{k}={v:.4f}" for k, v in rates.items()))
        logger.info(f"pre-stage epoch {epoch}: " + ", ".join(f"{k}={v:.4f}" for k, v in totals.items())
                    + " | collision " + ", ".join(f"{k}={v:.4f}" for k, v in rates.items()))
    for name in best:
        best[name].history = history[name]
    return best
