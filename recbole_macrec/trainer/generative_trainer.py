"""RecBole trainer for the generative models: AdamW, cosine schedule with warm-up, gradient
clipping, bf16 autocast on CUDA."""
import math

import torch
from recbole.trainer import Trainer
from recbole.utils import set_color
from torch.nn.utils import clip_grad_norm_
from tqdm import tqdm

from recbole_macrec.data.device_loader import LengthGroupedLoader, device_loader_applies


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
        self.length_group = config["gr_length_group"]
        self.device_loader = None

    def _build_optimizer(self, **kwargs):
        params = kwargs.pop("params", self.model.parameters())
        # one fused kernel for all parameters on CUDA instead of a loop over tensors
        return torch.optim.AdamW(params, lr=self.learning_rate, weight_decay=self.weight_decay,
                                 fused=self.device.type == "cuda")

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False,
            callback_fn=None):
        total = max(1, (self.epochs - self.start_epoch) * len(train_data))
        warmup = math.ceil(self.warmup_ratio * total)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, cosine_with_warmup(warmup, total))
        return super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)

    def batches_of(self, train_data):
        """The training batches: device-resident and length-grouped when ``gr_length_group`` is set
        and the loader is a plain one, else RecBole's loader."""
        if self.length_group and device_loader_applies(self.config, train_data):
            if self.device_loader is None or self.device_loader.source is not train_data:
                self.device_loader = LengthGroupedLoader(
                    train_data, self.device, self.config["ITEM_LIST_LENGTH_FIELD"],
                    group=self.length_group, seed=self.config["seed"])
            return self.device_loader
        return train_data

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        self.model.train()
        train_data = self.batches_of(train_data)
        loss_func = loss_func or self.model.calculate_loss
        batches = tqdm(train_data, total=len(train_data), ncols=100,
                       desc=set_color(f"Train {epoch_idx:>5}", "pink")) if show_progress else train_data
        total = torch.zeros((), device=self.device)
        for interaction in batches:
            total += self.train_step(interaction.to(self.device), loss_func)
        total = float(total)
        self._check_nan(torch.tensor(total))
        return total

    def train_step(self, interaction, loss_func=None):
        """One optimisation step on a batch already on the device; returns the detached loss."""
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.bf16):
            loss = (loss_func or self.model.calculate_loss)(interaction)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.clip_grad_norm:
            clip_grad_norm_(self.model.parameters(), **self.clip_grad_norm)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        return loss.detach()

    def _full_sort_batch_eval(self, batched_data):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.bf16):
            return super()._full_sort_batch_eval(batched_data)
