"""Several tasks' rows in one forward pass: stack them (padded to a common width, or row by row
from per-task tensors) and split the per-token losses back into one mean per task or one mean
per step."""
import torch
import torch.nn.functional as F

IGNORE = -100   # label of a token that carries no loss (cross_entropy's ignore_index)


def pad_cat(tensors, value):
    """Stack ``[B_i, S_i]`` tensors into ``[sum B_i, max S_i]``, right-padded with ``value``."""
    width = max(t.shape[1] for t in tensors)
    return torch.cat([F.pad(t, (0, width - t.shape[1]), value=value) for t in tensors], 0)


def segment_token_means(token_loss, valid, sizes):
    """Mean of ``token_loss [N, T]`` over ``valid`` tokens, per consecutive block of ``sizes`` rows
    (``sum(sizes) == N``): ``[len(sizes)]``."""
    # output_size: the result's length is known on the host, so no device-to-host sync
    segment = torch.repeat_interleave(torch.arange(len(sizes), device=token_loss.device),
                                      torch.as_tensor(sizes, device=token_loss.device),
                                      output_size=int(sum(sizes)))
    valid = valid.to(token_loss.dtype)
    totals = token_loss.new_zeros(len(sizes)).index_add_(0, segment, (token_loss * valid).sum(1))
    counts = valid.new_zeros(len(sizes)).index_add_(0, segment, valid.sum(1))
    return totals / counts


def stack_rows(per_task, task, value):
    """Row ``r`` of ``per_task[task[r]]``: ``per_task`` is a list of ``[R, S_t]`` tensors (the
    same rows built as each task), padded to a common width with ``value``."""
    stacked = torch.stack([F.pad(t, (0, max(x.shape[1] for x in per_task) - t.shape[1]), value=value)
                           for t in per_task])
    return stacked[task, torch.arange(len(task), device=task.device)]


def row_token_mean(token_loss, valid, row_weight):
    """Mean over the valid tokens of ``token_loss [R, T]``, each row's tokens weighted by
    ``row_weight [R]`` (a mixture step's loss: its tokens' mean, per-task weights applied)."""
    valid = valid.to(token_loss.dtype)
    return (token_loss * valid * row_weight[:, None]).sum() / valid.sum().clamp_min(1)
