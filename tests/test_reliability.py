"""Bad inputs and interruptions: each case ends in a clear error or a correct result, never in a
silently wrong one."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, TINY_T5, tiny_config_dict, write_codes

TINY_SID = dict(sid_views=["text", "collab"], text_view_fields=["title", "class"], view_dim=8,
                sid_num_levels=3, sid_codebook_size=4, sid_e_dim=8, sid_encoder_layers=[16], sid_projection_dim=8,
                sid_epochs=2, sid_batch_size=16, sid_pseudo_label_k=4, sid_con_weights=[0, 0.1, 0.1],
                sid_kmeans_iters=10)


def _config(data_path, model="SASRec", **kw):
    from recbole_macrec.config import Config

    return Config(model=model, dataset="tiny", config_dict=tiny_config_dict(data_path, **{**TINY_SID, **kw}))


def _derived_items(folder):
    from recbole_macrec.data.atomic import read_atomic

    return len(read_atomic(os.path.join(folder, "tiny.item"))[0])


def test_semantic_id_cache_follows_recboles_filters(tiny_dataset):
    """A filter changes the catalogue: another folder, never the cached one of other data."""
    from recbole_macrec.semantic_ids import build_semantic_ids, read_report

    filtered = build_semantic_ids(_config(tiny_dataset, item_inter_num_interval="[10,inf)"), "rqvae",
                                  show_progress=False)
    full = build_semantic_ids(_config(tiny_dataset), "rqvae", show_progress=False)
    assert filtered != full
    assert _derived_items(full) == 30 and _derived_items(filtered) < 30
    report = read_report(filtered)
    assert report["data_settings"]["item_inter_num_interval"] == "[10,inf)" and report["data_digest"]
    # a user filter changes the training pairs (the collab view): another folder too
    users = build_semantic_ids(_config(tiny_dataset, user_inter_num_interval="[8,inf)"), "rqvae",
                               show_progress=False)
    assert users not in (full, filtered)


def test_run_on_filtered_data_then_unfiltered_evaluates_all_items(tiny_dataset):
    from recbole_macrec.quick_start import build_run

    write_codes(tiny_dataset / "tiny")
    cfg = tiny_config_dict(tiny_dataset, **TINY_T5)
    small = build_run("TIGER", "tiny", config_dict={**cfg, "item_inter_num_interval": "[10,inf)"})[1]
    full = build_run("TIGER", "tiny", config_dict=cfg)[1]
    assert small.item_num < full.item_num == 31


def test_imported_codes_outside_the_codebook_are_refused(tiny_dataset):
    from recbole_macrec.semantic_ids import SemanticIdError, build_semantic_ids

    text, _ = write_codes(tiny_dataset / "tiny")
    text["i4"] = [0, 9, 1]
    (tiny_dataset / "tiny" / "tiny.text.codes.json").write_text(json.dumps(text))
    with pytest.raises(SemanticIdError, match=r"item 'i4' has code 9 at level 1, outside the codebook 0..3"):
        build_semantic_ids(_config(tiny_dataset, sid_views=["text"]), "import", show_progress=False)
    (tiny_dataset / "tiny" / "tiny.text.codes.json").write_text("{broken")
    with pytest.raises(SemanticIdError, match=r"tiny.text.codes.json: not valid JSON"):
        build_semantic_ids(_config(tiny_dataset, sid_views=["text"]), "import", show_progress=False)


TRICKY = ['"Weird" Al', 'back\\slash', "it's", 'tab\there', 'a "quoted" word', '"', 'semi;colon,comma']


def test_text_survives_our_writer_and_recboles_reader(tmp_path):
    """Quotes, backslashes and tabs in a cell: written by write_atomic, read back by RecBole."""
    import pandas as pd

    from recbole_macrec.config import Config
    from recbole.data.dataset import Dataset
    from recbole_macrec.data.atomic import read_atomic, write_atomic

    folder = tmp_path / "data" / "tiny"
    folder.mkdir(parents=True)
    rows = [(f"u{u}", f"i{i}", float(u * 10 + i)) for u in range(4) for i in range(len(TRICKY))]
    write_atomic(str(folder / "tiny.inter"), pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]),
                 {"user_id": "token", "item_id": "token", "timestamp": "float"})
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(len(TRICKY))], "brand": TRICKY})
    write_atomic(str(folder / "tiny.item"), items, {"item_id": "token", "brand": "token"})
    assert read_atomic(str(folder / "tiny.item"))[0]["brand"].tolist() == TRICKY
    config = Config(model="SASRec", dataset="tiny", config_dict=tiny_config_dict(
        tmp_path / "data", load_col={"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id", "brand"]}))
    ds = Dataset(config)
    brands = ds.id2token("brand", np.asarray(ds.item_feat["brand"], dtype=np.int64))
    by_item = dict(zip(ds.id2token("item_id", np.asarray(ds.item_feat["item_id"], dtype=np.int64)), brands))
    assert [by_item[f"i{i}"] for i in range(len(TRICKY))] == TRICKY


def test_dropped_interactions_are_reported(tiny_dataset, caplog):
    from recbole_macrec.quick_start import build_run

    lines = (tiny_dataset / "tiny" / "tiny.item").read_text().splitlines()
    (tiny_dataset / "tiny" / "tiny.item").write_text("\n".join(l for l in lines if not l.startswith("i5\t")) + "\n")
    absent = sum(line.split("\t")[1] == "i5" for line in (tiny_dataset / "tiny" / "tiny.inter").read_text().splitlines())
    with caplog.at_level("WARNING"):
        build_run("SASRec", "tiny", config_dict=tiny_config_dict(tiny_dataset))
    assert f"{absent} left out because their item has no row in" in caplog.text


def test_non_numeric_timestamp_is_named(tiny_dataset):
    from recbole_macrec.errors import DataError
    from recbole_macrec.quick_start import build_run

    path = tiny_dataset / "tiny" / "tiny.inter"
    lines = path.read_text().splitlines()
    lines[3] = lines[3].rsplit("\t", 1)[0] + "\tyesterday"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"tiny.inter: line 4: 'timestamp' is 'yesterday', not a number"):
        build_run("SASRec", "tiny", config_dict=tiny_config_dict(tiny_dataset))


def test_two_writers_of_one_file_never_share_a_temp_file_and_stale_temps_are_removed(tmp_path):
    from recbole_macrec.files import atomic_path, remove_stale_temps, temp_prefix

    target = tmp_path / "x.json"
    with atomic_path(target) as a, atomic_path(target) as b:
        assert a != b
        open(a, "w").write("a")
        open(b, "w").write("b")
    assert target.read_text() in ("a", "b") and not [p for p in os.listdir(tmp_path) if p != "x.json"]
    # a process that is gone left a temp file and folder; a live one's stay
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    (tmp_path / f".x.json.pid{pid}-abc.tmp").write_text("half")
    (tmp_path / f".sid-rqvae.pid{pid}-def").mkdir()
    live = tmp_path / f"{temp_prefix('y.json')}ghi.tmp"
    live.write_text("mine")
    assert sorted(remove_stale_temps(str(tmp_path))) == sorted([f".x.json.pid{pid}-abc.tmp", f".sid-rqvae.pid{pid}-def"])
    assert live.exists()


def test_command_line_values_are_data_never_code(tiny_dataset, monkeypatch):
    from recbole_macrec.config import Config, parse_value
    from recbole_macrec.errors import SettingError

    assert parse_value("__import__('os').getcwd()") == "__import__('os').getcwd()"
    assert parse_value("[text]") == ["text"] and parse_value("[text, collab]") == ["text", "collab"]
    assert parse_value("1e-3") == 0.001 and parse_value("[10,inf)") == "[10,inf)" and parse_value("False") is False
    monkeypatch.setattr(sys, "argv", ["x", "--run_label=__import__('os').getcwd()", "--gr_views=[text]"])
    config = Config(model="SASRec", dataset="tiny", config_dict=tiny_config_dict(tiny_dataset))
    assert config["run_label"] == "__import__('os').getcwd()" and config["gr_views"] == ["text"]
    monkeypatch.setattr(sys, "argv", ["x", "--epochs=abc"])
    with pytest.raises(SettingError, match="epochs must be an integer, got 'abc'"):
        Config(model="SASRec", dataset="tiny", config_dict=tiny_config_dict(tiny_dataset))
    monkeypatch.setattr(sys, "argv", ["x", "--sid_views=text"])
    with pytest.raises(SettingError, match="sid_views must be a list"):
        Config(model="SASRec", dataset="tiny", config_dict=tiny_config_dict(tiny_dataset))


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


class PickledObject:
    """Stands for the Config RecBole pickles into its checkpoints."""


def test_checkpoints_from_elsewhere_are_loaded_weights_only(tmp_path):
    import pickle

    import torch

    import recbole.trainer.trainer as trainer_module

    torch_view = trainer_module.torch
    ours = tmp_path / "ours.pth"
    torch_view.save({"obj": PickledObject()}, ours)      # as RecBole's trainer saves
    assert isinstance(torch_view.load(ours)["obj"], PickledObject)
    theirs = tmp_path / "theirs.pth"
    torch.save({"obj": PickledObject()}, theirs)          # a file this run did not write
    with pytest.raises(pickle.UnpicklingError):
        torch_view.load(theirs)


def _leaderboard(tiny_dataset, out, *extra):
    from recbole_macrec import leaderboard

    cfg = tiny_config_dict(tiny_dataset, hidden_size=16, inner_size=16, n_layers=1, n_heads=1)
    return leaderboard.main(["--dataset=tiny", "--models=SASRec", f"--out={out}", "--set",
                             *[f"{k}={json.dumps(v)}" for k, v in cfg.items()], *extra])


def test_leaderboard_resumes_only_identical_settings(tiny_dataset, workdir, capsys):
    out = workdir / "lb"
    _leaderboard(tiny_dataset, out)
    run = json.loads((out / "runs" / "SASRec-seed2020.json").read_text())
    assert run["settings"]["hidden_size"] == 16 and run["settings_digest"]
    _leaderboard(tiny_dataset, out)                       # identical: kept, and it says so
    assert "SASRec seed 2020: finished earlier with the same settings, kept" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="SASRec-seed2020.json was made with other settings"):
        _leaderboard(tiny_dataset, out, "hidden_size=32", "--seeds=2")
    assert not (out / "runs" / "SASRec-seed2021.json").exists()   # refused before anything ran
    # a run_label names the row and its files: the other setting is its own row
    _leaderboard(tiny_dataset, out, "hidden_size=32", "run_label='SASRec wide'")
    assert (out / "runs" / "SASRec_wide-seed2020.json").exists()
    assert json.loads((out / "runs" / "SASRec-seed2020.json").read_text())["settings"]["hidden_size"] == 16
    assert "| SASRec wide |" in (out / "leaderboard.md").read_text()


def test_runs_of_one_label_with_other_settings_are_separate_rows(tiny_dataset, workdir):
    from recbole_macrec import leaderboard

    base = {"model": "SASRec", "label": "SASRec", "epochs": 1, "seed": 2020, "wall_time_s": 1.0, "machine": "m",
            "test_result": {m: 0.1 for m in leaderboard.METRICS}}
    runs = [{**base, "settings_digest": "a", "path": "x"}, {**base, "settings_digest": "b", "path": "y",
                                                           "test_result": {m: 0.3 for m in leaderboard.METRICS}}]
    rows = leaderboard.aggregate(runs)
    assert sorted(r["label"] for r in rows) == ["SASRec [settings a]", "SASRec [settings b]"]
    assert sorted(r["ndcg@10"] for r in rows) == [0.1, 0.3]


def test_ingest_and_leaderboard_builds_survive_malformed_files(tmp_path, capsys):
    from recbole_macrec import leaderboard

    src, runs = tmp_path / "src", tmp_path / "runs"
    src.mkdir()
    runs.mkdir()
    good = {"model": "TIGER", "epochs": 3, "seed": 2020, "wall_time_s": 1.0, "machine": "m",
            "test_result": {m: 0.1 for m in leaderboard.METRICS}}
    (src / "good.json").write_text(json.dumps(good))
    (src / "traversal.json").write_text(json.dumps({**good, "seed": "../../evil"}))
    (src / "partial.json").write_text(json.dumps({"test_result": {}}))
    (src / "broken.json").write_text("{not json")
    targets = leaderboard.ingest([src], str(runs))
    assert [os.path.basename(t) for t in targets] == ["TIGER-e3-seed2020.json"]
    err = capsys.readouterr().err
    assert "traversal.json: not a run result ('seed' missing or not int)" in err
    assert "partial.json: not a run result" in err and "broken.json: not readable json" in err
    (runs / "junk.json").write_text("[1, 2]")
    assert [r["model"] for r in leaderboard.load_runs(str(runs))] == ["TIGER"]
    assert "junk.json: not a run result" in capsys.readouterr().err


def test_set_without_equals_is_a_clear_error():
    from recbole_macrec.errors import SettingError
    from recbole_macrec.config import parse_overrides

    with pytest.raises(SettingError, match="--set 'epochs5': expected KEY=VALUE"):
        parse_overrides(["epochs5"])
