"""RecBole trainer for the generative models: AdamW, cosine schedule with warm-up over the
optimiser steps actually taken, gradient accumulation, gradient clipping, bf16 autocast for
training on CUDA (decoding in fp32 unless ``gr_bf16_eval``), the released task mixture's epochs,
model selection on a ranking metric or the validation loss, and an optional training-time budget.
The epoch loop (learning curve, resumable state) is :mod:`recbole_macrec.trainer.epoch_loop`'s."""
import contextlib
import copy
import itertools
import math
import random
import time

import numpy as np

import torch
from recbole.trainer import Trainer
from recbole.utils import set_color
from torch.nn.utils import clip_grad_norm_
from tqdm import tqdm

from recbole_macrec.data.device_loader import LengthGroupedLoader, TaskMixtureLoader, device_loader_applies
from recbole_macrec.distributed import global_rank, world_size
from recbole_macrec.errors import SettingError
from recbole_macrec.timing import synchronize
from recbole_macrec.trainer.epoch_loop import EpochLoop


def cosine_with_warmup(warmup_steps, total_steps):
    """LR multiplier: linear warm-up to 1, then cosine decay to 0 at ``total_steps``."""

    def factor(step):
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


PROBE_WARMUP_STEPS = 2   # untimed: the first steps pay for allocator growth and kernel selection
PROBE_STEPS = 10


def epochs_for_budget(budget_s, epoch_s, max_epochs, eval_step):
    """``(epochs, eval_step)`` for a training budget: as many epochs of ``epoch_s`` seconds as fit
    (at least 1, at most ``max_epochs``), cut to a multiple of ``eval_step`` so that the last epoch
    is validated (a budget shorter than ``eval_step`` epochs validates once, at its end)."""
    epochs = int(max(1, min(max_epochs, budget_s // max(epoch_s, 1e-9))))
    if eval_step <= 0:
        return epochs, eval_step
    if epochs >= eval_step:
        return epochs // eval_step * eval_step, eval_step
    return epochs, epochs


def native_bf16(device):
    """True where bf16 matrix products run natively: CUDA, or a CPU with AVX512-BF16 or AMX (on
    other CPUs bf16 is emulated and slower than fp32)."""
    if torch.device(device).type == "cuda":
        return True
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def grad_accum_setting(config):
    """``gr_grad_accum``: the micro-batches one optimiser step of ``train_batch_size`` rows is
    computed in (1 = none); it must divide the batch."""
    accum = config["gr_grad_accum"]
    if isinstance(accum, bool) or not isinstance(accum, int) or accum < 1:
        raise SettingError(f"gr_grad_accum must be a positive integer, got {accum!r}")
    batch = int(config["train_batch_size"])
    if batch % accum:
        raise SettingError(f"gr_grad_accum={accum} does not divide train_batch_size={batch}: every "
                           f"micro-batch of a step must be a whole share of the step's rows")
    return accum


def selection_setting(config):
    """``(metric, bigger)`` that selects the best epoch: ``gr_valid_metric`` (``loss``: the
    validation loss, as the released fine-tuning selects; ~: RecBole's ``valid_metric``), checked
    against the metrics the evaluator computes."""
    name = config["gr_valid_metric"] or config["valid_metric"]
    setting = "gr_valid_metric" if config["gr_valid_metric"] else "valid_metric"
    if str(name).lower() == "loss":
        return "loss", False
    computed = [f"{m}@{k}".lower() for m in config["metrics"] for k in config["topk"]]
    if str(name).lower() not in computed:
        raise SettingError(f"{setting}={name!r} is neither 'loss' nor a metric the evaluator computes "
                           f"({', '.join(f'{m}@{k}' for m in config['metrics'] for k in config['topk'])})")
    return str(name).lower(), bool(config["valid_metric_bigger"])


class GenerativeTrainer(EpochLoop, Trainer):
    @classmethod
    def check_settings(cls, config):
        """Raise :class:`SettingError` for trainer settings that cannot work; the runner calls it
        before any data is loaded or any pre-stage runs."""
        grad_accum_setting(config)
        selection_setting(config)

    def __init__(self, config, model):
        super().__init__(config, model)
        self.init_epoch_loop()
        self.grad_accum = grad_accum_setting(config)
        self.valid_metric, self.valid_metric_bigger = selection_setting(config)
        self.best_valid_score = -np.inf if self.valid_metric_bigger else np.inf
        self.bf16 = bool(config["gr_bf16"]) and native_bf16(self.device)
        self.bf16_eval = bool(config["gr_bf16_eval"])
        self.warmup_ratio = float(config["warmup_ratio"])
        self.scheduler = None
        self.length_group = config["gr_length_group"]
        self.device_loader = None
        self.budget_plan = None
        self.rank, self.world_size = global_rank(config), world_size(config)
        if self.world_size > 1 and config["gr_train_budget_s"]:
            raise SettingError("gr_train_budget_s plans epochs in one process; with several, set epochs")

    def _build_optimizer(self, **kwargs):
        params = kwargs.pop("params", self.model.parameters())
        # one fused kernel for all parameters on CUDA instead of a loop over tensors
        return torch.optim.AdamW(params, lr=self.learning_rate, weight_decay=self.weight_decay,
                                 fused=self.device.type == "cuda")

    def before_training(self, train_data, valid_data):
        """Plan the epochs of a training budget (not when resuming: the plan is in the state), then
        size the cosine schedule on the optimiser steps the epochs actually take: the task
        mixture's batches, not RecBole's loader's (about 4x as many for MACRec)."""
        if self.model.full_sort == "exact" or self.config["gr_beam_check"]:
            self.model.check_exact_cost()   # before minutes of training, not at the first validation
        if self.config["gr_train_budget_s"] and self.start_epoch == 0 and self._resume is None:
            self.plan_epochs(train_data, float(self.config["gr_train_budget_s"]), bool(valid_data))
        total = max(1, self.epochs * len(self.batches_of(train_data)))
        warmup = math.ceil(self.warmup_ratio * total)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, cosine_with_warmup(warmup, total))
        self.schedule = {"steps_per_epoch": len(self.batches_of(train_data)), "total_steps": total,
                         "warmup_steps": warmup}

    def scheduler_state(self):
        return self.scheduler.state_dict() if self.scheduler is not None else None

    def load_scheduler_state(self, state):
        if state is not None:
            self.scheduler.load_state_dict(state)

    def order_generators(self, train_data):
        generators = super().order_generators(train_data)
        batches = self.batches_of(train_data)
        if batches is not train_data:
            generators["device_loader"] = batches.generator
        return generators

    def epoch_batches(self, train_data):
        return self.batches_of(train_data)

    def batches_of(self, train_data):
        """The training batches: the model's task mixture (``gr_task_mix: released``), else
        device-resident length-grouped batches when ``gr_length_group`` is set and the loader is a
        plain one, else RecBole's loader. With several processes each rank takes its slice of
        every batch of ``train_batch_size`` rows."""
        mixture = self.model.task_mixture() if hasattr(self.model, "task_mixture") else None
        applies = device_loader_applies(self.config, train_data)
        if mixture is None and not (self.length_group and applies):
            return train_data
        if not applies:
            raise SettingError("gr_task_mix: released builds its epochs on the device, which needs no "
                               "negative sampling and no transform; use gr_task_mix: per_batch")
        if self.device_loader is None or self.device_loader.source is not train_data:
            common = dict(seed=self.config["seed"], batch_size=self.config["train_batch_size"],
                          rank=self.rank, world_size=self.world_size)
            if mixture is not None:
                fields = {"seq": self.model.ITEM_SEQ, "length": self.model.ITEM_SEQ_LEN,
                          "item": self.model.POS_ITEM_ID}
                self.device_loader = TaskMixtureLoader(train_data, self.device, fields, mixture,
                                                       self.model.n_items, group=max(1, int(self.length_group or 1)),
                                                       **common)
            else:
                self.device_loader = LengthGroupedLoader(train_data, self.device,
                                                         self.config["ITEM_LIST_LENGTH_FIELD"],
                                                         group=self.length_group, **common)
        return self.device_loader

    def autocast(self, enabled):
        """bf16 autocast on the trainer's device when ``enabled``."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def plan_epochs(self, train_data, budget_s, validates=True):
        """Set ``epochs`` (and ``eval_step``) to what fits ``budget_s`` training seconds, from the
        time of a few probe steps; the probe leaves no trace (model, optimiser, RNGs and batch
        order are restored), so the run equals one started with ``epochs`` set to the result."""
        batches = self.batches_of(train_data)
        step_s = self.probe_step_seconds(batches)
        eval_step = self.eval_step if validates else 0
        epochs, eval_step = epochs_for_budget(budget_s, step_s * len(batches), self.epochs, eval_step)
        self.budget_plan = {"train_budget_s": budget_s, "probe_s_per_step": round(step_s, 5),
                            "steps_per_epoch": len(batches), "estimated_epoch_s": round(step_s * len(batches), 3),
                            "epochs_asked": self.epochs, "epochs": epochs}
        self.logger.info(f"training budget {budget_s:.0f} s: {step_s:.4f} s/step x {len(batches)} steps "
                         f"-> {epochs} epochs (asked {self.epochs})")
        self.epochs = self.config["epochs"] = epochs
        if validates:
            self.eval_step = self.config["eval_step"] = eval_step
        self.budget_plan["eval_step"] = self.eval_step

    def probe_step_seconds(self, batches):
        """Mean wall seconds of a training step over ``PROBE_STEPS`` steps of ``batches`` (after
        ``PROBE_WARMUP_STEPS`` untimed ones), leaving no trace of them. An epoch too short for both
        is timed whole, from a fresh pass: its last batch is often a small remainder, and one step
        alone would misjudge the epoch."""
        with self.state_restored(batches):
            self.model.train()
            epoch = iter(batches)
            for interaction in itertools.islice(epoch, PROBE_WARMUP_STEPS):
                self.train_step(interaction.to(self.device))
            timed = min(PROBE_STEPS, len(batches))
            if len(batches) < PROBE_WARMUP_STEPS + PROBE_STEPS:
                epoch = iter(batches)
            synchronize(self.device)
            start = time.perf_counter()
            for interaction in itertools.islice(epoch, timed):
                self.train_step(interaction.to(self.device))
            synchronize(self.device)
            return (time.perf_counter() - start) / timed

    @contextlib.contextmanager
    def state_restored(self, batches):
        """Restore on exit all that training steps change: weights, optimiser state, the RNGs
        (dropout) and the batch order of ``batches``."""
        model_state = copy.deepcopy(self.model.state_dict())
        optimizer_state = copy.deepcopy(self.optimizer.state_dict())
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        rng = torch.get_rng_state(), np.random.get_state(), random.getstate()
        generator = getattr(batches, "generator", None)
        order_state = generator.get_state() if generator is not None else None
        try:
            yield
        finally:
            self.model.load_state_dict(model_state)
            self.optimizer.load_state_dict(optimizer_state)
            torch.set_rng_state(rng[0])
            np.random.set_state(rng[1])
            random.setstate(rng[2])
            if cuda_rng is not None:
                torch.cuda.set_rng_state_all(cuda_rng)
            if generator is not None:
                generator.set_state(order_state)

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

    def backward(self, loss):
        if self.world_size > 1:   # arm DDP's gradient all-reduce, as RecBole's own trainer does
            self.set_reduce_hook()
            loss = loss + self.sync_grad_loss()
        loss.backward()

    def accumulated_gradients(self, interaction):
        """Gradients of the step's loss over ``gr_grad_accum`` micro-batches of ``interaction``: each
        micro-batch's loss weighted by its share of the step's loss weight (target tokens under the
        released mixture), so that the step's gradient and loss are those of one pass over the
        whole batch. Returns the step's detached loss."""
        chunks = torch.arange(len(interaction), device=self.device).tensor_split(self.grad_accum)
        weighted, total = 0.0, 0.0
        for rows in (c for c in chunks if len(c)):   # an epoch's last batch may hold fewer rows
            with self.autocast(self.bf16):
                loss, weight = self.model.calculate_loss_and_weight(interaction[rows])
            self.backward(loss * weight)
            weighted, total = weighted + loss.detach() * weight, total + weight
        for p in self.model.parameters():
            if p.grad is not None:
                p.grad.div_(total)
        return weighted / total

    def train_step(self, interaction, loss_func=None):
        """One optimisation step on a batch already on the device; returns the detached loss."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.grad_accum > 1:
            loss = self.accumulated_gradients(interaction)
        else:
            with self.autocast(self.bf16):
                loss = (loss_func or self.model.calculate_loss)(interaction)
            self.backward(loss)
        if self.clip_grad_norm:
            clip_grad_norm_(self.model.parameters(), **self.clip_grad_norm)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        return loss.detach()

    @torch.no_grad()
    def validation_loss(self, valid_data):
        """Mean target-token cross-entropy of the model's validation task (seqrec: history -> the
        held-out next item) over the validation users; with several processes, over all of theirs."""
        self.model.eval()
        total = torch.zeros(2, dtype=torch.float64, device=self.device)
        with self.autocast(self.bf16 and self.bf16_eval):
            for batched in valid_data:
                loss_sum, count = self.model.validation_loss_terms(batched[0].to(self.device))
                total += torch.stack([loss_sum.double(), count.double()])
        if self.world_size > 1:
            import torch.distributed as dist

            dist.all_reduce(total)
        return float(total[0] / total[1].clamp_min(1))

    def _valid_epoch(self, valid_data, show_progress=False):
        if self.valid_metric == "loss":   # the released selection: no decoding while training
            loss = self.validation_loss(valid_data)
            return loss, {"loss": loss}
        return super()._valid_epoch(valid_data, show_progress)

    def validation_extras(self, valid_data):
        if self.valid_metric == "loss":
            return {}
        return {"valid_loss": self.validation_loss(valid_data)}

    def _full_sort_batch_eval(self, batched_data):
        # bf16 logits are 0.06-0.125 apart at the magnitudes decoding sees: beam rankings would
        # carry rounding noise, so decoding stays fp32 unless gr_bf16_eval asks otherwise
        with self.autocast(self.bf16 and self.bf16_eval):
            return super()._full_sort_batch_eval(batched_data)
