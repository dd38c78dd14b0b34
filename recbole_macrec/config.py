"""RecBole ``Config`` that also reads the plugin's ``properties/`` and knows the plugin's models."""
import sys
from logging import getLogger
from pathlib import Path

from recbole.config import Config as RecBoleConfig

from recbole_macrec.errors import SettingError
from recbole_macrec.registry import get_model

# inside the package, so that a non-editable install finds it (a checkout's top-level properties/
# links here)
PROPERTIES_DIR = Path(__file__).resolve().parent / "properties"

# Settings whose type RecBole or the plugin relies on: a wrong type is named here, before any work,
# instead of failing deep inside a run.
INT_SETTINGS = ("epochs", "train_batch_size", "eval_batch_size", "eval_step", "stopping_step", "seed",
                "MAX_ITEM_LIST_LENGTH", "beam_size", "d_model", "d_kv", "d_ff", "num_layers",
                "num_decoder_layers", "num_heads", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "gr_length_group", "view_dim")
NUMBER_SETTINGS = ("learning_rate", "weight_decay", "dropout_rate", "implicit_weight", "implicit_temperature",
                   "warmup_ratio", "gr_train_budget_s")
LIST_SETTINGS = ("sid_views", "gr_views", "gr_tasks", "gr_inference_views", "text_view_fields", "topk")


def parse_value(text):
    """A command-line value as data, never as code (RecBole ``eval``s it): a Python literal
    (``5``, ``1e-3``, ``[1, 2]``, ``{'a': 1}``), ``true`` / ``false`` / ``none``, an unquoted yaml
    list or mapping (``[text, collab]``), else the text itself (``[14,inf)`` stays a string)."""
    import ast

    import yaml

    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null", "~"):
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        pass
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, (list, dict)) else text


def parse_overrides(items):
    """``{key: value}`` of command-line ``KEY=VALUE`` items, values read as data (5, 1e-3, True, [a, b])."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SettingError(f"--set {item!r}: expected KEY=VALUE, e.g. epochs=5")
        overrides[key] = parse_value(value)
    return overrides


def check_setting_types(values):
    """Raise :class:`SettingError` naming the first setting of the wrong type in ``values``."""
    for key in INT_SETTINGS:
        value = values.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise SettingError(f"{key} must be an integer, got {value!r}")
    for key in NUMBER_SETTINGS:
        value = values.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise SettingError(f"{key} must be a number, got {value!r}")
    for key in LIST_SETTINGS:
        value = values.get(key)
        if value is not None and not isinstance(value, (list, tuple)):
            raise SettingError(f"{key} must be a list, e.g. [a, b], got {value!r}")


def command_line_values(args):
    """``({key: value string}, [args not of the form --key=value])``. The value is everything after
    the first ``=``: RecBole splits on every ``=`` and drops ``--run_label="a=b"``."""
    values, unrecognized = {}, []
    for arg in args:
        key, sep, value = arg[2:].partition("=")
        if not arg.startswith("--") or not sep or not key:
            unrecognized.append(arg)
            continue
        if key in values and values[key] != value:
            raise SyntaxError(f"command line: --{key} is given twice, as {values[key]!r} and {value!r}")
        values[key] = value
    return values, unrecognized


def model_yamls(model_class):
    """``properties/model/<Class>.yaml`` of each class in ``model_class``'s hierarchy that has one,
    base classes first."""
    return [path for cls in reversed(model_class.__mro__)
            if (path := PROPERTIES_DIR / "model" / f"{cls.__name__}.yaml").is_file()]


class Config(RecBoleConfig):
    """Precedence, lowest first: RecBole's own yaml, the plugin's ``overall.yaml`` and ``semantic_ids.yaml``, the plugin's
    ``model/<Class>.yaml`` of each class of the model, base classes first (shared settings live
    once, in the base's yaml), the plugin's ``dataset/<dataset>.yaml``, then the user's config files,
    config dict and command line (RecBole's usual order for external input). Command-line values
    are read as data (:func:`parse_value`), a caller's config dict is taken as given, and the
    types of common settings are checked."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        check_setting_types(self.final_config_dict)

    def _init_device(self):
        """RecBole's set-up, except for several processes: gloo on the CPU (RecBole hard-codes NCCL
        and CUDA), NCCL on GPUs; ``ddp_backend`` chooses explicitly."""
        if "local_rank" not in self.final_config_dict:
            return super()._init_device()
        import os

        import torch
        import torch.distributed as dist

        cfg = self.final_config_dict
        gpu_id = cfg["gpu_id"]
        cfg["gpu_id"] = ",".join(map(str, gpu_id)) if isinstance(gpu_id, tuple) else str(gpu_id)
        os.environ["CUDA_VISIBLE_DEVICES"] = cfg["gpu_id"]
        from recbole_macrec.distributed import global_rank, share_cores

        backend = cfg.get("ddp_backend") or ("nccl" if torch.cuda.is_available() and cfg["use_gpu"] else "gloo")
        cfg["single_spec"] = False
        rank = global_rank(cfg)
        if not dist.is_initialized():
            dist.init_process_group(backend=backend, rank=rank, world_size=cfg["world_size"],
                                    init_method=f"tcp://{cfg['ip']}:{cfg['port']}")
        if backend == "nccl":
            cfg["device"] = torch.device("cuda", cfg["local_rank"])
            torch.cuda.set_device(cfg["local_rank"])
        else:
            cfg["device"] = torch.device("cpu")
            cfg["cpu_threads"] = share_cores(int(cfg.get("nproc") or cfg["world_size"]))
        if rank != 0:
            cfg["state"], cfg["show_progress"], cfg["verbose"] = "error", False, False

    def _convert_config_dict(self, config_dict):
        return {key: parse_value(value) if isinstance(value, str) else value
                for key, value in config_dict.items()}

    def _load_variable_config_dict(self, config_dict):
        return dict(config_dict) if config_dict else {}

    def _get_model_and_dataset(self, model, dataset):
        if model is None:
            model = self.external_config_dict.get("model")
            if model is None:
                raise KeyError("model must be given: --model=NAME, a config file or a config dict")
        if isinstance(model, str):
            model_class = get_model(model)
        else:
            model_class, model = model, model.__name__
        if dataset is None:
            dataset = self.external_config_dict.get("dataset")
            if dataset is None:
                raise KeyError("dataset must be given: --dataset=NAME, a config file or a config dict")
        return model, model_class, dataset

    def _load_internal_config_dict(self, model, model_class, dataset):
        super()._load_internal_config_dict(model, model_class, dataset)
        for path in (
            PROPERTIES_DIR / "overall.yaml",
            PROPERTIES_DIR / "semantic_ids.yaml",
            *model_yamls(model_class),
            PROPERTIES_DIR / "dataset" / f"{dataset}.yaml",
        ):
            if path.is_file():
                loaded = self._update_internal_config_dict(str(path)) or {}
                if path.parent.name == "dataset":
                    self.parameters["Dataset"] += [
                        k for k in loaded if k not in self.parameters["Dataset"]
                    ]

    def _load_cmd_line(self):
        if "ipykernel_launcher" in sys.argv[0]:
            return {}
        values, unrecognized = command_line_values(sys.argv[1:])
        if unrecognized:
            getLogger().warning(f"command line args [{' '.join(unrecognized)}] will not be used in RecBole")
        return self._convert_config_dict(values)
