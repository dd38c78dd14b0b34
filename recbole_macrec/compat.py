"""Make RecBole 1.2.1 run on numpy 2 and torch >= 2.6.

Applied once when :mod:`recbole_macrec` is imported. Each shim is scoped to the RecBole code that
needs it; nothing global (numpy itself, ``torch.load``) changes behaviour for other libraries.
"""
import os
import types

import numpy as np
import torch

# RecBole still spells the aliases numpy removed in 1.24/2.0 (np.float, np.bool, ...).
NUMPY_ALIASES = {
    "bool": np.bool_,
    "int": np.int_,
    "float": np.float64,
    "complex": np.complex128,
    "object": np.object_,
    "str": np.str_,
    "long": np.int_,
    "unicode": np.str_,
}


def set_numpy_aliases():
    """Set the removed numpy aliases RecBole uses, without touching ones numpy still defines."""
    for name, target in NUMPY_ALIASES.items():
        if name not in np.__dict__:
            setattr(np, name, target)


def _patch_config():
    from recbole.config.configurator import Config

    if getattr(Config.compatibility_settings, "_recbole_macrec", False):
        return
    original = Config.compatibility_settings

    def compatibility_settings(self):
        set_numpy_aliases()

    compatibility_settings._recbole_macrec = True
    compatibility_settings.original = original
    Config.compatibility_settings = compatibility_settings


class _TorchWithTrustedLoad(types.ModuleType):
    """``torch`` as RecBole's trainer sees it: ``load`` unpickles the checkpoints this process
    itself saved (RecBole pickles its ``Config`` into them, which torch >= 2.6 refuses by default
    with ``weights_only=True``); any other file (e.g. a ``resume_checkpoint`` from elsewhere) is
    loaded weights-only. Only the trainer module gets this view of torch."""

    written = set()   # real paths of the checkpoints saved in this process

    def __init__(self):
        super().__init__("torch")

    def __getattr__(self, name):
        return getattr(torch, name)

    @classmethod
    def save(cls, obj, f, *args, **kwargs):
        torch.save(obj, f, *args, **kwargs)
        if isinstance(f, (str, os.PathLike)):
            cls.written.add(os.path.realpath(f))

    @classmethod
    def load(cls, f, *args, **kwargs):
        trusted = isinstance(f, (str, os.PathLike)) and os.path.realpath(f) in cls.written
        kwargs.setdefault("weights_only", not trusted)
        return torch.load(f, *args, **kwargs)


def trust_checkpoint(path):
    """Let RecBole's trainer unpickle ``path`` in full: a checkpoint of this run that an earlier
    process wrote (a resumed run's best epoch; its weights may hold a model's modules)."""
    _TorchWithTrustedLoad.written.add(os.path.realpath(path))


def _patch_trainer_torch_load():
    import recbole.trainer.trainer as trainer_module

    if not isinstance(trainer_module.torch, _TorchWithTrustedLoad):
        trainer_module.torch = _TorchWithTrustedLoad()


def _ddp_on_any_device(module, device_ids=None, **kwargs):
    """RecBole wraps every model as ``DistributedDataParallel(model, device_ids=[local_rank])``,
    which only a GPU module accepts; a CPU module (gloo) takes no device ids."""
    from torch.nn.parallel import DistributedDataParallel

    on_cpu = all(p.device.type == "cpu" for p in module.parameters())
    return DistributedDataParallel(module, device_ids=None if on_cpu else device_ids, **kwargs)


def _gather_eval_rows(trainer, struct):
    """Every rank's evaluation rows (``rec.topk``) and users, once each: RecBole's distributed
    sampler repeats users to even out the shards, and its ``_map_reduce`` averages rounded
    per-rank metrics weighted by batches; the union evaluated once is the single-process result."""
    import torch.distributed as dist

    users = torch.cat(trainer._eval_users) if trainer._eval_users else torch.zeros(0, dtype=torch.long)
    rows = struct.get("rec.topk")
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (users.cpu(), rows.cpu()))
    users = torch.cat([u for u, _ in gathered])
    rows = torch.cat([r for _, r in gathered])
    _, first = np.unique(users.numpy(), return_index=True)
    keep = torch.from_numpy(np.sort(first))
    struct.set("rec.topk", rows[keep])
    trainer.eval_users = users[keep]
    return struct


def _exact_distributed_evaluate(evaluate):
    def wrapped(self, eval_data, *args, **kwargs):
        if self.config["single_spec"]:
            return evaluate(self, eval_data, *args, **kwargs)
        uid = self.config["USER_ID_FIELD"]
        collect, score = self.eval_collector.eval_batch_collect, self.evaluator.evaluate
        self._eval_users = []

        def recording(scores, interaction, positive_u, positive_i):
            self._eval_users.append(interaction[uid].cpu())
            return collect(scores, interaction, positive_u, positive_i)

        self.eval_collector.eval_batch_collect = recording
        self.evaluator.evaluate = lambda struct: score(_gather_eval_rows(self, struct))
        self._map_reduce = lambda result, num_sample: result    # already the union's metrics
        try:
            return evaluate(self, eval_data, *args, **kwargs)
        finally:
            self.eval_collector.eval_batch_collect, self.evaluator.evaluate = collect, score
            del self._map_reduce

    wrapped._recbole_macrec = True
    return wrapped


def _makedirs(dir_path):
    os.makedirs(dir_path, exist_ok=True)


def _patch_distributed_training():
    import recbole.data.utils as data_utils
    import recbole.trainer.trainer as trainer_module
    import recbole.utils.logger as logger_module

    # RecBole's ensure_dir checks, then creates: two processes starting together both create
    logger_module.ensure_dir = trainer_module.ensure_dir = data_utils.ensure_dir = _makedirs

    trainer_module.DistributedDataParallel = _ddp_on_any_device
    if not getattr(trainer_module.Trainer.evaluate, "_recbole_macrec", False):
        trainer_module.Trainer.evaluate = _exact_distributed_evaluate(trainer_module.Trainer.evaluate)


def _undo_sine_anomaly_detection():
    """``recbole/model/sequential_recommender/sine.py`` calls ``torch.autograd.set_detect_anomaly(True)``
    when it is imported, and any import of RecBole's sequential models imports it (a leaderboard
    that names SASRec, the list of built-in models): from then on every backward pass of the
    process runs with anomaly detection, 2.5x slower (MACRec on ml-100k: 0.32 against 0.13 s per
    step). Import it once here and put the mode back as it was."""
    was = torch.is_anomaly_enabled()
    import recbole.model.sequential_recommender.sine  # noqa: F401

    torch.autograd.set_detect_anomaly(was)


def apply():
    set_numpy_aliases()
    _undo_sine_anomaly_detection()
    _patch_config()
    _patch_trainer_torch_load()
    _patch_distributed_training()
