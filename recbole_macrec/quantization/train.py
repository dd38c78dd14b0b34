"""Train RQ-VAEs on item views and return per-view semantic IDs (before collision resolution).

Methods: ``rqvae`` (one RQ-VAE per view, TIGER / MQL4GRec), ``rqvae_sinkhorn`` (the same with a
Sinkhorn-balanced last level, LC-Rec) and ``macrec`` (two views trained jointly with MACRec's
per-level cross-modal InfoNCE and reconstruction alignment).
"""
from dataclasses import dataclass, field
from logging import getLogger

import numpy as np
import torch
from tqdm import tqdm

from recbole_macrec.quantization.collisions import collision_rate
from recbole_macrec.quantization.kmeans import pseudo_labels
from recbole_macrec.quantization.losses import cross_modal_level_loss, symmetric_info_nce
from recbole_macrec.quantization.rqvae import RQVAE

METHODS = ("rqvae", "rqvae_sinkhorn", "macrec", "import")


@dataclass
class QuantizerParams:
    num_levels: int = 4
    codebook_size: int = 256
    e_dim: int = 32
    encoder_layers: tuple = (768, 2048, 1024, 512, 256, 128, 64)
    epochs: int = 500
    batch_size: int = 2048
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    beta: float = 0.25
    dropout: float = 0.0
    kmeans_iters: int = 50
    pseudo_label_k: int = 512
    con_weights: tuple = (0.0, 0.0, 0.1, 0.1)
    con_positive: str = "cluster"
    align_weight: float = 0.001
    temperature: float = 0.1
    sinkhorn_epsilon: float = 0.003
    sinkhorn_iters: int = 50
    collision: str = "reassign"
    dead_code_restart: bool = False

    @classmethod
    def from_config(cls, config):
        values = {}
        for name in cls.__dataclass_fields__:
            value = config[f"sid_{name}"]
            if value is not None:
                values[name] = tuple(value) if isinstance(value, list) else value
        params = cls(**values)
        if len(params.con_weights) != params.num_levels:
            raise ValueError(f"sid_con_weights has {len(params.con_weights)} entries for "
                             f"{params.num_levels} levels")
        if params.collision not in ("reassign", "extra_level"):
            raise ValueError(f"sid_collision must be 'reassign' or 'extra_level', got '{params.collision}'")
        return params


@dataclass
class ViewCodes:
    codes: np.ndarray                  # [N, L] before resolution
    last_distances: np.ndarray         # [N, M] squared distance of the last residual to each codeword
    prev_distances: np.ndarray         # [N, M] the same at level L-2
    epoch: int                         # the epoch these codes come from (lowest collision rate)
    rate: float                        # their collision rate
    history: list = field(default_factory=list)


def _build(views, params, method, device):
    sinkhorn_levels = (params.num_levels - 1,) if method == "rqvae_sinkhorn" else ()
    return {
        name: RQVAE(x.shape[1], list(params.encoder_layers), params.e_dim, params.num_levels,
                    params.codebook_size, params.beta, params.dropout, sinkhorn_levels,
                    params.sinkhorn_epsilon, params.sinkhorn_iters).to(device)
        for name, x in views.items()
    }


@torch.no_grad()
def encode_all(model, x, batch_size):
    """Codes ``[N, L]``, distances ``[L, N, M]`` and level input residuals ``[L, N, d]`` (tensors
    on ``x``'s device) for every row of ``x``."""
    model.eval()
    codes, dists, residuals = [], [], []
    for start in range(0, len(x), batch_size):
        _, code, residual, dist, _ = model.quantizer(model.encoder(x[start:start + batch_size]))
        codes.append(code)
        dists.append(dist)
        residuals.append(residual)
    return torch.cat(codes), torch.cat(dists, dim=1), torch.cat(residuals, dim=1)


def batch_loss(models, outputs, labels, idx, params, method, generator):
    """Total loss and its named parts for one batch (``outputs``: view -> RQVAE output)."""
    parts = {}
    for name, out in outputs.items():
        parts[f"{name}/recon"] = out["recon_loss"]
        parts[f"{name}/vq"] = out["vq_loss"]
    if method == "macrec":
        (a, out_a), (b, out_b) = outputs.items()
        for level, weight in enumerate(params.con_weights):
            if weight > 0:
                parts[f"con{level}"] = weight * cross_modal_level_loss(
                    out_a["residuals"][level], out_b["residuals"][level], labels[a][idx],
                    labels[b][idx], params.temperature, params.con_positive, generator)
        if params.align_weight > 0:
            parts["align"] = params.align_weight * symmetric_info_nce(
                out_a["quantized"], out_b["quantized"], params.temperature)
    return sum(parts.values()), parts


def train_quantizers(views, method, params, seed, device="cpu", show_progress=True):
    """Train on ``views`` (name -> ``[N, d]`` float32, rows aligned by item) and return, per view,
    the codes of the epoch with the lowest collision rate (:class:`ViewCodes`)."""
    logger = getLogger()
    if method not in ("rqvae", "rqvae_sinkhorn", "macrec"):
        raise ValueError(f"unknown training method '{method}' (expected rqvae, rqvae_sinkhorn, macrec)")
    if method == "macrec" and len(views) != 2:
        raise ValueError(f"macrec needs exactly two views, got {list(views)}")
    n_items = len(next(iter(views.values())))
    if params.codebook_size > n_items:
        raise ValueError(f"sid_codebook_size={params.codebook_size} exceeds the {n_items} items: "
                         f"k-means cannot initialise the codebooks")
    torch.manual_seed(seed)
    generator = torch.Generator(device=device).manual_seed(seed)
    x = {name: torch.as_tensor(v, dtype=torch.float32, device=device) for name, v in views.items()}
    labels = {}
    if method == "macrec":
        labels = {name: torch.as_tensor(pseudo_labels(v, params.pseudo_label_k, seed,
                                                      params.kmeans_iters), device=device)
                  for name, v in views.items()}
    models = _build(views, params, method, device)
    for name, model in models.items():
        with torch.no_grad():
            model.quantizer.kmeans_init(model.encoder(x[name]), seed)
    optimizer = torch.optim.AdamW([p for m in models.values() for p in m.parameters()],
                                  lr=params.learning_rate, weight_decay=params.weight_decay)
    best, history = {}, {name: [] for name in models}
    epochs = tqdm(range(params.epochs), desc=f"pre-stage {method}", ncols=100,
                  disable=not show_progress)
    for epoch in epochs:
        for m in models.values():
            m.train()
        order = torch.randperm(n_items, generator=generator, device=device)
        totals = {}
        for start in range(0, n_items, params.batch_size):
            idx = order[start:start + params.batch_size]
            outputs = {name: models[name](x[name][idx]) for name in models}
            loss, parts = batch_loss(models, outputs, labels, idx, params, method, generator)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            for k, v in parts.items():
                totals[k] = totals.get(k, 0.0) + v.item() * len(idx) / n_items
        rates = {}
        for name, model in models.items():
            codes, dists, residuals = encode_all(model, x[name], params.batch_size)
            codes_np = codes.cpu().numpy()
            rates[name] = collision_rate(codes_np)
            entry = {"epoch": epoch, "collision_rate": rates[name],
                     **{k: v for k, v in totals.items() if k.startswith(name + "/")}}
            if name not in best or rates[name] < best[name].rate:
                dists = dists.cpu().numpy()
                best[name] = ViewCodes(codes_np, dists[-1], dists[max(len(dists) - 2, 0)], epoch,
                                       rates[name])
            if params.dead_code_restart and epoch < params.epochs - 1:
                entry["dead_codes_restarted"] = model.quantizer.restart_dead_codes(
                    residuals, codes, generator, optimizer)
            history[name].append(entry)
        epochs.set_postfix_str(" ".join(f"{k}={v:.4f}" for k, v in rates.items()))
        logger.info(f"pre-stage epoch {epoch}: " + ", ".join(f"{k}={v:.4f}" for k, v in totals.items())
                    + " | collision " + ", ".join(f"{k}={v:.4f}" for k, v in rates.items()))
    for name in best:
        best[name].history = history[name]
    return best
