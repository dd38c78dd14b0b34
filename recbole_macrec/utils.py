"""Model and trainer lookup (the plugin's own models first, then RecBole's built-ins), the
device clock helper shared by the trainer, the runner's timings and the benchmarks, and the json
writer of result files."""
import importlib
import json
import math
import os
import pkgutil
from pathlib import Path

# name -> "module:Class". Imported lazily so that `run_recbole.py --model=SASRec` never pays for
# transformers.
PLUGIN_MODELS = {
    "TIGER": "recbole_macrec.model.tiger:TIGER",
    "MACRec": "recbole_macrec.model.macrec:MACRec",
    "MQL4GRec": "recbole_macrec.model.macrec:MQL4GRec",
    "LCRec": "recbole_macrec.model.lcrec:LCRec",
}

# RecBole model families that need no optional third-party library (exlib needs lightgbm/xgboost).
RECBOLE_SUBMODULES = (
    "sequential_recommender",
    "general_recommender",
    "context_aware_recommender",
    "knowledge_aware_recommender",
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PROPERTIES_DIR = PROJECT_ROOT / "properties"


def _importable_plugin_models():
    found = {}
    for name, target in PLUGIN_MODELS.items():
        module_name = target.split(":")[0]
        if importlib.util.find_spec(module_name) is not None:
            found[name] = target
    return found


def recbole_model_names():
    """Names of RecBole's built-in models (one module per model, lower-case file name)."""
    import recbole.model

    names = []
    for submodule in RECBOLE_SUBMODULES:
        package = importlib.import_module(f"recbole.model.{submodule}")
        exported = {n.lower(): n for n in dir(package) if isinstance(getattr(package, n), type)}
        for info in pkgutil.iter_modules(package.__path__):
            if info.name in exported:
                names.append(exported[info.name])
    return sorted(set(names))


def available_models():
    return sorted(_importable_plugin_models()) + recbole_model_names()


def get_model(model_name):
    """Return the model class for ``model_name``: plugin models first, then RecBole's."""
    plugin = _importable_plugin_models()
    if model_name in plugin:
        module_name, class_name = plugin[model_name].split(":")
        return getattr(importlib.import_module(module_name), class_name)
    for submodule in RECBOLE_SUBMODULES:
        module_path = f"recbole.model.{submodule}.{model_name.lower()}"
        if importlib.util.find_spec(module_path) is not None:
            module = importlib.import_module(module_path)
            if hasattr(module, model_name):
                return getattr(module, model_name)
    raise ValueError(
        f"Unknown model '{model_name}'. Available models: {', '.join(available_models())}"
    )


def get_trainer(model_type, model_name):
    """The plugin model's own trainer if it names one, else RecBole's choice for the model."""
    if model_name in PLUGIN_MODELS:
        model_class = get_model(model_name)
        trainer = getattr(model_class, "trainer_class", None)
        if trainer is not None:
            return trainer
    from recbole.utils import get_trainer as recbole_get_trainer

    return recbole_get_trainer(model_type, model_name)


def synchronize(device):
    """Wait for the device's queued work (CUDA runs asynchronously), so that a clock read after it
    includes that work; a no-op on the CPU."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def strict_json_value(obj):
    """``obj`` with every non-finite float as None (strict JSON has no NaN or Infinity; RecBole
    reports a best valid score of -inf for a run it never validated)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {key: strict_json_value(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json_value(value) for value in obj]
    return obj


def write_json(path, obj):
    """Write ``obj`` to ``path`` as strict, indented JSON, atomically: a reader never sees half a
    file, and an interrupted write leaves the old one."""
    from recbole_macrec.files import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(strict_json_value(obj), f, indent=2, allow_nan=False)
