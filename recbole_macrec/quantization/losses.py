"""MACRec's cross-modal quantisation losses (paper: per-level InfoNCE and reconstruction alignment)."""
import torch
import torch.nn.functional as F


def pick_positives(labels, generator=None):
    """For each anchor ``i`` a random in-batch ``j != i`` with ``labels[j] == labels[i]``.

    ``labels [B]`` are the OTHER view's pseudo-labels of the batch items. Anchors with no such
    item get themselves (as the released code does). Returns ``[B]`` batch indices.
    """
    same = labels[:, None] == labels[None, :]
    same.fill_diagonal_(False)
    noise = torch.rand(same.shape, generator=generator, device=labels.device)
    score = torch.where(same, noise, torch.full_like(noise, -1.0))
    best = score.argmax(dim=1)
    has_positive = same.any(dim=1)
    return torch.where(has_positive, best, torch.arange(len(labels), device=labels.device))


def info_nce_to_positive(features, positives, temperature):
    """InfoNCE of each normalised row against all rows of the batch, the target being ``positives``."""
    f = F.normalize(features, dim=1)
    logits = f @ f.t() / temperature
    return F.cross_entropy(logits, positives)


def cross_modal_level_loss(res_a, res_b, labels_a, labels_b, temperature, positive="cluster",
                           generator=None):
    """Per-level cross-modal term for residuals ``res_a, res_b [B, d]`` of views a and b.

    An anchor of view a takes its positive from view b's clusters (``labels_b``) and vice versa.
    ``positive='self'`` reproduces the released code, where every anchor is its own positive.
    """
    if positive == "self":
        pos_a = pos_b = torch.arange(res_a.shape[0], device=res_a.device)
    elif positive == "cluster":
        pos_a = pick_positives(labels_b, generator)
        pos_b = pick_positives(labels_a, generator)
    else:
        raise ValueError(f"sid_con_positive must be 'cluster' or 'self', got '{positive}'")
    return (info_nce_to_positive(res_a, pos_a, temperature)
            + info_nce_to_positive(res_b, pos_b, temperature))


def symmetric_info_nce(a, b, temperature):
    """Bidirectional InfoNCE between paired rows of ``a`` and ``b`` ``[B, d]`` (row i <-> row i)."""
    logits = F.normalize(a, dim=1) @ F.normalize(b, dim=1).t() / temperature
    target = torch.arange(a.shape[0], device=a.device)
    return F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)
