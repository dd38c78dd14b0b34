"""InfoNCE, written once, and MACRec's cross-modal quantisation losses built on it (paper: per-level
InfoNCE and reconstruction alignment); the generative stage's implicit alignment uses it too."""
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


# A residual shorter than this fraction of the batch's mean residual length is divided by that
# length instead of its own: an item that has a codeword to itself (a singleton cluster) has a
# residual of exactly 0 at the next level, whose direction is undefined and whose normalisation
# gradient (1 / |r|) is unbounded (1e12 was measured on a tiny RQ-VAE).
RESIDUAL_NORM_FLOOR = 0.05


def normalize_rows(x, floor=0.0):
    """Rows of ``x [B, d]`` divided by their L2 norm (as ``F.normalize``), or by ``floor`` x the
    batch's mean norm (detached) where that is larger."""
    norm = x.norm(dim=1, keepdim=True)
    if floor > 0:
        norm = torch.maximum(norm, floor * norm.detach().mean())
    return x / norm.clamp_min(1e-12)


def info_nce(a, b, temperature, positives=None, both_directions=False, norm_floor=0.0):
    """InfoNCE of each L2-normalised row of ``a [B, d]`` against every row of ``b [B, d]``
    (``b is a``: the batch against itself, the anchor included, as in the released code), the
    positive of row ``i`` being row ``positives[i]`` (default ``i``: paired rows). With
    ``both_directions`` the ``b -> a`` term (the same logits, transposed) is added. ``norm_floor``:
    see :func:`normalize_rows`."""
    a_unit = normalize_rows(a, norm_floor)
    b_unit = a_unit if b is a else normalize_rows(b, norm_floor)
    logits = a_unit @ b_unit.t() / temperature
    if positives is None:
        positives = torch.arange(a.shape[0], device=a.device)
    loss = F.cross_entropy(logits, positives)
    if both_directions:
        loss = loss + F.cross_entropy(logits.t(), positives)
    return loss


def info_nce_to_positive(features, positives, temperature, norm_floor=0.0):
    """InfoNCE of each row of ``features [B, d]`` against all rows of the batch, the target being
    row ``positives[i]``."""
    return info_nce(features, features, temperature, positives, norm_floor=norm_floor)


def cross_modal_level_loss(res_a, res_b, labels_a, labels_b, temperature, generator=None):
    """The paper's per-level term for residuals ``res_a, res_b [B, d]`` of views a and b: an anchor
    of view a takes its positive from view b's clusters (``labels_b``) and vice versa."""
    return (info_nce_to_positive(res_a, pick_positives(labels_b, generator), temperature, RESIDUAL_NORM_FLOOR)
            + info_nce_to_positive(res_b, pick_positives(labels_a, generator), temperature, RESIDUAL_NORM_FLOOR))


def self_positive_level_loss(res_a, res_b, temperature):
    """The released code's per-level term: every anchor is its own positive (its class lookup
    compares str and int keys, so no other item ever matches)."""
    itself = torch.arange(res_a.shape[0], device=res_a.device)
    return (info_nce_to_positive(res_a, itself, temperature)
            + info_nce_to_positive(res_b, itself, temperature))


def symmetric_info_nce(a, b, temperature, norm_floor=0.0):
    """Bidirectional InfoNCE between paired rows of ``a`` and ``b`` ``[B, d]`` (row i <-> row i),
    the sum of both directions. ``norm_floor``: see :func:`normalize_rows`."""
    return info_nce(a, b, temperature, both_directions=True, norm_floor=norm_floor)
