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


def _patch_trainer_torch_load():
    import recbole.trainer.trainer as trainer_module

    if not isinstance(trainer_module.torch, _TorchWithTrustedLoad):
        trainer_module.torch = _TorchWithTrustedLoad()


def apply():
    set_numpy_aliases()
    _patch_config()
    _patch_trainer_torch_load()
