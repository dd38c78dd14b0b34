"""Which class a model name means and which trainer trains it: the plugin's own models first, then
RecBole's built-ins (as RecBole-GNN's ``get_model`` / ``get_trainer``). Models never name their
trainer; a new model is one :func:`register_model` call."""
import importlib
import pkgutil

GENERATIVE_TRAINER = "recbole_macrec.trainer.generative_trainer:GenerativeTrainer"

# name -> ("module:Class" or class, trainer "module:Class"). Imported lazily so that
# `run_recbole.py --model=SASRec` never pays for transformers.
PLUGIN_MODELS = {
    "TIGER": ("recbole_macrec.model.tiger:TIGER", GENERATIVE_TRAINER),
    "MACRec": ("recbole_macrec.model.macrec:MACRec", GENERATIVE_TRAINER),
    "MQL4GRec": ("recbole_macrec.model.macrec:MQL4GRec", GENERATIVE_TRAINER),
    "LCRec": ("recbole_macrec.model.lcrec:LCRec", GENERATIVE_TRAINER),
}

# RecBole model families that need no optional third-party library (exlib needs lightgbm/xgboost).
RECBOLE_SUBMODULES = (
    "sequential_recommender",
    "general_recommender",
    "context_aware_recommender",
    "knowledge_aware_recommender",
)


def register_model(name, model, trainer=GENERATIVE_TRAINER):
    """Make ``name`` a plugin model: ``model`` and ``trainer`` are classes or ``"module:Class"``."""
    PLUGIN_MODELS[name] = (model, trainer)


def _load(target):
    if isinstance(target, str):
        module_name, class_name = target.split(":")
        return getattr(importlib.import_module(module_name), class_name)
    return target


def recbole_model_names():
    """Names of RecBole's built-in models (one module per model, lower-case file name)."""
    names = []
    for submodule in RECBOLE_SUBMODULES:
        package = importlib.import_module(f"recbole.model.{submodule}")
        exported = {n.lower(): n for n in dir(package) if isinstance(getattr(package, n), type)}
        for info in pkgutil.iter_modules(package.__path__):
            if info.name in exported:
                names.append(exported[info.name])
    return sorted(set(names))


def available_models():
    return sorted(PLUGIN_MODELS) + recbole_model_names()


def get_model(model_name):
    """Return the model class for ``model_name``: plugin models first, then RecBole's."""
    if model_name in PLUGIN_MODELS:
        return _load(PLUGIN_MODELS[model_name][0])
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
    """The trainer registered with a plugin model, else RecBole's choice for the model, with the
    plugin's epoch loop (learning curve, resumable state; :mod:`recbole_macrec.trainer.epoch_loop`)."""
    from recbole_macrec.trainer.epoch_loop import with_epoch_loop

    if model_name in PLUGIN_MODELS:
        return with_epoch_loop(_load(PLUGIN_MODELS[model_name][1]))
    from recbole.utils import get_trainer as recbole_get_trainer

    return with_epoch_loop(recbole_get_trainer(model_type, model_name))
