import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, tiny_config_dict
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


def test_run_recbole_script_rejects_settings_not_of_the_form_key_value(capsys):
    import run_recbole

    with pytest.raises(SystemExit):
        run_recbole.main(["--model=TIGER", "--epochs", "5"])
    assert "not understood: --epochs 5" in capsys.readouterr().err


def _run_script(*args, cwd):
    return subprocess.run([sys.executable, str(ROOT / "run_recbole.py"), *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def test_the_script_reports_bad_settings_in_one_line_before_any_work(tiny_dataset, workdir):
    base = ["--dataset=tiny", f"--data_path={tiny_dataset}", "--use_gpu=False", "--state=WARNING"]
    out = _run_script("--model=SASRec", *base, "--epochs=abc", cwd=workdir)
    assert out.returncode != 0 and "error: epochs must be an integer, got 'abc'" in out.stderr
    assert "Traceback" not in out.stderr
    # beam_size < top-k and sid_epochs=0 fail before the pre-stage: no semantic-ID folder appears
    for bad, message in (("--beam_size=5", "beam_size=5 is smaller than the largest top-k"),
                         ("--sid_epochs=0", "sid_epochs must be a positive integer")):
        out = _run_script("--model=TIGER", *base, "--sid_method=rqvae", "--sid_views=[text]",
                          "--text_view_fields=[title]", bad, cwd=workdir)
        assert out.returncode != 0 and message in out.stderr and "Traceback" not in out.stderr
        assert not [p for p in os.listdir(tiny_dataset / "tiny") if p.startswith("sid-")]
