"""RecBole ``Config`` that also reads the plugin's ``properties/`` and knows the plugin's models."""
from recbole.config import Config as RecBoleConfig

from recbole_macrec.utils import PROPERTIES_DIR, get_model


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
