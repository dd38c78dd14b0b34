import pickle

import numpy as np
import pytest
import torch

from recbole_macrec import compat


def test_recbole_original_compatibility_settings_fails_on_numpy2_and_ours_works():
    from recbole.config.configurator import Config

    original = Config.compatibility_settings.original
    if hasattr(np, "float_"):
        pytest.skip("numpy < 2: RecBole's own aliases still work")
    with pytest.raises(AttributeError):
        original(None)
    Config.compatibility_settings(None)
    assert np.float is np.float64 and np.int is np.int_ and np.unicode is np.str_


def test_numpy_aliases_do_not_override_existing_names():
    before = np.bool
    compat.set_numpy_aliases()
    assert np.bool is before


class _PickledConfig:  # stands in for the Config RecBole pickles into checkpoints
    value = 3


def test_trainer_torch_load_reads_recbole_checkpoints(tmp_path):
    import recbole.trainer.trainer as trainer_module

    path = tmp_path / "ckpt.pth"
    trainer_module.torch.save({"config": _PickledConfig(), "state_dict": {"w": torch.ones(2)}}, path)  # as RecBole saves
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path)  # torch >= 2.6 default: refuses pickled objects
    loaded = trainer_module.torch.load(path, map_location="cpu")
    assert loaded["config"].value == 3
    # Only RecBole's trainer module sees the trusting load; torch itself is unchanged.
    assert torch.load is not trainer_module.torch.load
    assert trainer_module.torch.nn is torch.nn


def test_importing_recboles_sequential_models_leaves_anomaly_detection_off():
    """RecBole's sine.py turns torch's anomaly detection on at import (2.5x slower backward)."""
    import torch

    import recbole_macrec  # noqa: F401
    from recbole_macrec.registry import get_model, recbole_model_names

    get_model("SASRec")
    recbole_model_names()
    import recbole.model.sequential_recommender.sine  # noqa: F401

    assert not torch.is_anomaly_enabled()


class PickledObject:
    """Stands for the Config RecBole pickles into its checkpoints."""


def test_checkpoints_from_elsewhere_are_loaded_weights_only(tmp_path):
    import pickle

    import recbole.trainer.trainer as trainer_module
    import torch

    torch_view = trainer_module.torch
    ours = tmp_path / "ours.pth"
    torch_view.save({"obj": PickledObject()}, ours)      # as RecBole's trainer saves
    assert isinstance(torch_view.load(ours)["obj"], PickledObject)
    theirs = tmp_path / "theirs.pth"
    torch.save({"obj": PickledObject()}, theirs)          # a file this run did not write
    with pytest.raises(pickle.UnpicklingError):
        torch_view.load(theirs)
