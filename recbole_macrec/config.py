"""RecBole ``Config`` that also reads the plugin's ``properties/`` and knows the plugin's models."""
import sys
from logging import getLogger

from recbole.config import Config as RecBoleConfig

from recbole_macrec.utils import PROPERTIES_DIR, get_model


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


class Config(RecBoleConfig):
    """Precedence, lowest first: RecBole's own yaml, the plugin's ``overall.yaml`` and ``semantic_ids.yaml``, the plugin's
    ``model/<Model>.yaml``, the plugin's ``dataset/<dataset>.yaml``, then the user's config files,
    config dict and command line (RecBole's usual order for external input)."""

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
            PROPERTIES_DIR / "model" / f"{model}.yaml",
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
