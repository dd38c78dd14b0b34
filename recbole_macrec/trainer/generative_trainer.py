"""RecBole trainer for the generative models: AdamW, cosine schedule with warm-up, gradient
clipping, bf16 autocast on CUDA."""
import math

import torch
from recbole.trainer import Trainer
from recbole.utils import set_color
from torch.nn.utils import clip_grad_norm_
from tqdm import tqdm


def cosine_with_warmup(warmup_steps, total_steps):
    """LR multiplier: linear warm-up to 1, then cosine decay to 0 at ``total_steps``."""

    def factor(step):
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


class GenerativeTrainer(Trainer):
    def __init__(self, config, model):
        super().__init__(config, model)
        self.bf16 = bool(config["gr_bf16"]) and self.device.type == "cuda"
        self.warmup_ratio = float(config["warmup_ratio"] or 0.0)
        self.scheduler = None

    def _build_optimizer(self, **kwargs):
        params = kwargs.pop("params", self.model.parameters())
        return torch.optim.AdamW(params, lr=self.learning_rate, weight_decay=self.weight_decay)

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False,
            callback_fn=None):
        total = max(1, (self.epochs - self.start_epoch) * len(train_data))
        warmup = math.ceil(self.warmup_ratio * total)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, cosine_with_warmup(warmup, total))
        return super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        self.model.train()
        loss_func = loss_func or self.model.calculate_loss
        batches = tqdm(train_data, total=len(train_data), ncols=100,
                       desc=set_color(f"Train {epoch_idx:>5}", "pink")) if show_progress else train_data
        total = torch.zeros((), device=self.device)
        for interaction in batches:
            interaction = interaction.to(self.device)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.bf16):
                loss = loss_func(interaction)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.clip_grad_norm:
                clip_grad_norm_(self.model.parameters(), **self.clip_grad_norm)
            self.optimizer.step()
            if self.scheduler is not None:
                self.scheduler.step()
            total += loss.detach()
        total = float(total)
        self._check_nan(torch.tensor(total))
        return total

    def _full_sort_batch_eval(self, batched_data):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.bf16):
            return super()._full_sort_batch_eval(batched_data)
