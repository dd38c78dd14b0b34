import json

import numpy as np

import pytest

from conftest import tiny_config_dict
from recbole_macrec.quick_start import run_recbole
from recbole_macrec.registry import available_models, get_model


def test_unknown_model_is_a_clear_error_listing_models():
    with pytest.raises(ValueError) as err:
        get_model("NoSuchModel")
    assert "NoSuchModel" in str(err.value) and "SASRec" in str(err.value)


def test_run_recbole_script_rejects_unknown_model(workdir):
    import run_recbole

    with pytest.raises(SystemExit) as err:
        run_recbole.main(["--model=NoSuchModel"])
    assert "Unknown model 'NoSuchModel'" in str(err.value) and "GRU4Rec" in str(err.value)


def test_builtin_models_are_listed():
    names = available_models()
    for name in ("SASRec", "BERT4Rec", "GRU4Rec", "FDSA", "BPR"):
        assert name in names


def test_missing_dataset_names_the_file(workdir):
    with pytest.raises(FileNotFoundError, match="nowhere.inter"):
        run_recbole("SASRec", "nowhere", config_dict=tiny_config_dict(workdir / "data"))


@pytest.mark.parametrize("model", ["SASRec", "GRU4Rec", "BERT4Rec", "FDSA"])
def test_builtin_sequential_models_run_end_to_end(tiny_dataset, model):
    extra = {"selected_features": ["class"]} if model == "FDSA" else {}
    result = run_recbole(model, "tiny", config_dict=tiny_config_dict(tiny_dataset, **extra))
    assert set(result["test_result"]) == {f"{m}@{k}" for m in ("hit", "ndcg") for k in (1, 5, 10, 20)}
    saved = json.loads(open(result["result_file"]).read())
    assert saved["test_result"] == result["test_result"]
    assert saved["model"] == model and saved["epochs"] == 1
    ranks = np.load(result["result_file"].replace(".json", ".ranks.npz"))
    assert len(ranks["users"]) == len(set(ranks["users"].tolist())) == 40  # one test row per user
    for k in (1, 5, 10, 20):
        hit = ((ranks["rank"] > 0) & (ranks["rank"] <= k)).mean()
        assert hit == pytest.approx(result["test_result"][f"hit@{k}"], abs=1e-4)


def test_run_json_records_the_epochs_actually_trained(tiny_dataset):
    """Memory-based models (Pop) train one epoch whatever ``epochs`` says; the json must say 1."""
    result = run_recbole("Pop", "tiny", config_dict=tiny_config_dict(tiny_dataset, epochs=5))
    saved = json.loads(open(result["result_file"]).read())
    assert saved["epochs"] == saved["epochs_run"] == 1


def test_result_files_of_the_same_second_do_not_overwrite(workdir, monkeypatch):
    from recbole_macrec import quick_start

    monkeypatch.setattr(quick_start.time, "strftime", lambda fmt: "20261127-070000")
    config = {"results_dir": str(workdir / "runs"), "model": "TIGER", "dataset": "tiny"}
    ranks = (np.array([1, 2]), np.array([3, 0]))
    first = quick_start.write_result_file(config, {"run": 1}, ranks)
    second = quick_start.write_result_file(config, {"run": 2}, ranks)
    assert first != second
    assert [json.load(open(p))["run"] for p in (first, second)] == [1, 2]
    assert sorted(p.name for p in (workdir / "runs").iterdir()) == [
        "TIGER-tiny-20261127-070000-2.json", "TIGER-tiny-20261127-070000-2.ranks.npz",
        "TIGER-tiny-20261127-070000.json", "TIGER-tiny-20261127-070000.ranks.npz"]


def test_command_line_values_keep_equals_signs_in_values():
    from recbole_macrec.config import command_line_values

    values, unrecognized = command_line_values(
        ["--run_label=TIGER restart=True", "--epochs=5", "--epochs=5", "-x", "--flag", "5", "--=3"])
    assert values == {"run_label": "TIGER restart=True", "epochs": "5"}
    assert unrecognized == ["-x", "--flag", "5", "--=3"]
    with pytest.raises(SyntaxError, match="--epochs is given twice, as '5' and '6'"):
        command_line_values(["--epochs=5", "--epochs=6"])


def test_config_reads_a_value_containing_equals(tiny_dataset, monkeypatch):
    from recbole_macrec.config import Config

    monkeypatch.setattr("sys.argv", ["run_recbole.py", "--run_label=TIGER restart=True", "--epochs=7"])
    config = Config("SASRec", "tiny", config_dict=tiny_config_dict(tiny_dataset))
    assert config["run_label"] == "TIGER restart=True" and config["epochs"] == 7


def test_run_recbole_script_rejects_settings_not_of_the_form_key_value(capsys):
    import run_recbole

    with pytest.raises(SystemExit):
        run_recbole.main(["--model=TIGER", "--epochs", "5"])
    assert "not understood: --epochs 5" in capsys.readouterr().err
