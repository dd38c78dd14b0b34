import json
import os

import pytest

from conftest import tiny_config_dict
from recbole_macrec import leaderboard
from recbole_macrec.errors import SettingError


def _args(tiny_dataset, out, models="Pop,SASRec", seeds=2):
    cfg = tiny_config_dict(tiny_dataset)
    sets = [f"{k}={json.dumps(v)}" for k, v in cfg.items()]
    return ["--dataset=tiny", f"--models={models}", f"--seeds={seeds}", f"--out={out}", "--set", *sets]


def test_two_models_two_seeds_write_all_files(tiny_dataset, workdir):
    out = workdir / "lb"
    leaderboard.main(_args(tiny_dataset, out))
    for name in ("leaderboard.md", "leaderboard.csv", "leaderboard.json", "leaderboard.png"):
        assert (out / name).is_file(), name
    board = json.loads((out / "leaderboard.json").read_text())
    runs = {(r["label"], r["seed"]): r for r in board["runs"]}
    assert set(runs) == {(m, s) for m in ("Pop", "SASRec") for s in (2020, 2021)}
    for row in board["rows"]:
        values = [runs[(row["label"], s)]["test_result"]["ndcg@10"] for s in (2020, 2021)]
        assert row["ndcg@10"] == pytest.approx(sum(values) / 2)
        assert row["seeds"] == [2020, 2021]
    # each run's json is the runner's own result
    for (label, seed), run in runs.items():
        saved = json.loads((out / "runs" / run["file"]).read_text())
        assert saved["test_result"] == run["test_result"] and saved["seed"] == seed
    sig = board["significance"]
    assert {sig["best"], sig["runner_up"]} == {"Pop", "SASRec"} and sig["users"] == 40
    md = (out / "leaderboard.md").read_text()
    assert "| Pop |" in md and "| SASRec |" in md and "Paired test" in md
    # speed columns come from the runs' own timing records
    sasrec = next(r for r in board["rows"] if r["label"] == "SASRec")
    timings = [runs[("SASRec", s)]["timing"] for s in (2020, 2021)]
    assert sasrec["test_s"] == pytest.approx(sum(t["test_s"] for t in timings) / 2)
    assert sasrec["epoch_s"] == pytest.approx(sum(t["train_epoch_s"][0] for t in timings) / 2)
    assert "s/epoch" in md and "test s" in md
    assert (out / "curves.png").is_file() and sasrec["early_stopped"] == "0/2" and sasrec["best_epoch"] >= 1


def _curve_run(label, lrs, scores, bigger=True):
    curve = [{"epoch": e, "lr_start": a, "lr_end": b, "train_loss": 1.0 / (e + 1), "steps": 1, "seconds": 1.0,
              "valid_score": v} for e, ((a, b), v) in enumerate(zip(lrs, scores))]
    return {"label": label, "model": label, "epochs": len(curve), "seed": 2020, "wall_time_s": 1.0, "machine": "m",
            "test_result": {m: 0.1 for m in leaderboard.METRICS}, "curve": curve, "best_epoch": 0,
            "early_stopped": False, "valid_score_bigger": bigger}


def test_rows_whose_lr_reached_zero_or_that_did_not_learn_are_flagged(tmp_path):
    from recbole_macrec.leaderboard.stats import curve_flags

    fine = _curve_run("Fine", [(1e-3, 5e-4), (5e-4, 0.0)], [0.1, 0.2])
    lr_zero = _curve_run("Stalled", [(1e-3, 0.0), (0.0, 0.0)], [0.1, 0.2])
    flat = _curve_run("Flat", [(1e-3, 5e-4), (5e-4, 1e-4), (1e-4, 0.0)], [0.3, 0.3, 0.2])
    loss = _curve_run("Loss", [(1e-3, 5e-4), (5e-4, 0.0)], [2.0, 1.5], bigger=False)
    assert curve_flags(fine) == [] and curve_flags(loss) == []
    assert curve_flags(_curve_run("Short", [(1e-3, 5e-4), (5e-4, 0.0)], [0.2, 0.1])) == []   # 2 validations
    assert curve_flags(lr_zero) == ["LR reached 0 before its last epoch"]
    assert curve_flags(flat) == ["did not learn (validation never improved after its first evaluation)"]
    rows = leaderboard.aggregate([fine, lr_zero, flat])
    md = leaderboard.markdown("toy", rows, None, {}, [])
    assert "Stalled (seed 2020): LR reached 0 before its last epoch" in md
    assert "Flat (seed 2020): did not learn" in md and "Fine (seed" not in md
    from recbole_macrec.leaderboard.render import plot_curves

    assert plot_curves([fine, lr_zero, flat], str(tmp_path / "curves.png"), "toy")
    assert (tmp_path / "curves.png").stat().st_size > 1000


def test_best_epoch_is_the_mean_over_seeds_one_based_with_one_decimal():
    runs = []
    for seed, best in zip((2020, 2021, 2022), (43, 49, 71)):   # 0-based, as the trainer records them
        run = _curve_run("Seeded", [(1e-3, 5e-4), (5e-4, 1e-4), (1e-4, 1e-5)], [0.1, 0.2, 0.3])
        runs.append({**run, "seed": seed, "best_epoch": best, "early_stopped": True})
    rows = leaderboard.aggregate(runs)
    assert rows[0]["best_epoch"] == pytest.approx((44 + 50 + 72) / 3)
    assert "| 55.3 | 3/3 |" in leaderboard.markdown("toy", rows, None, {}, [])


def test_rows_without_timing_records_show_a_dash():
    run = {"label": "Old", "model": "Old", "epochs": 1, "seed": 1, "wall_time_s": 5.0, "machine": "m",
           "test_result": {m: 0.1 for m in leaderboard.METRICS}}
    rows = leaderboard.aggregate([run])
    assert rows[0]["epoch_s"] is None and rows[0]["test_s"] is None
    assert "| — | — | — | — | 5 | m |" in leaderboard.markdown("toy", rows, None, {}, [])


def test_interrupted_leaderboard_resumes_without_redoing_finished_runs(tiny_dataset, workdir, monkeypatch):
    out = workdir / "lb"
    leaderboard.main(_args(tiny_dataset, out, models="Pop", seeds=2))
    os.remove(out / "runs" / "Pop-seed2021.json")  # as if killed during the second run
    calls = []
    real = leaderboard.cli.run_entry

    def counting(entry, dataset, seed, *rest):
        calls.append((entry.label, seed))
        return real(entry, dataset, seed, *rest)

    monkeypatch.setattr(leaderboard.cli, "run_entry", counting)
    leaderboard.main(_args(tiny_dataset, out, models="Pop", seeds=2))
    assert calls == [("Pop", 2021)]
    leaderboard.main(_args(tiny_dataset, out, models="Pop", seeds=2))
    assert calls == [("Pop", 2021)]


def test_unknown_model_is_rejected_before_anything_runs(tiny_dataset, workdir, monkeypatch):
    monkeypatch.setattr(leaderboard.cli, "run_entry", lambda *a: pytest.fail("nothing may run"))
    with pytest.raises(SystemExit, match="Unknown model 'Nope'"):
        leaderboard.main(_args(tiny_dataset, workdir / "lb", models="SASRec,Nope"))
    assert not list((workdir / "lb" / "runs").glob("*.json"))


def test_ablation_preset_rows():
    entries = leaderboard.entries_for([], "ablation")
    assert [e.label for e in entries] == ["MACRec", "MACRec w/o L_con", "MACRec released L_con", "MACRec same-item L_con",
                                          "MACRec w/o L_align", "MACRec w/o implicit", "MACRec w/o explicit"]
    assert all(os.path.isfile(f) for e in entries for f in e.config_files)


def test_ablation_preset_leaves_out_prestage_terms_on_imported_codes(capsys, tiny_dataset, workdir, monkeypatch):
    entries = leaderboard.entries_for([], "ablation", sid_method="import")
    assert [e.label for e in entries] == ["MACRec", "MACRec w/o implicit", "MACRec w/o explicit"]
    assert "wo_con, released_con, same_item_con, wo_align left out" in capsys.readouterr().err
    # the dataset's own sid_method decides (Instruments.yaml imports the published codes)
    seen = []
    monkeypatch.setattr(leaderboard.cli, "run_entry", lambda entry, *a: seen.append(entry.label))
    monkeypatch.setattr(leaderboard.cli, "write_outputs", lambda *a: [])
    monkeypatch.setattr("builtins.open", _readme_stub(open))
    leaderboard.main(["--dataset=Instruments", "--preset=ablation", f"--out={workdir / 'lb'}"])
    assert seen == ["MACRec", "MACRec w/o implicit", "MACRec w/o explicit"]


def _readme_stub(real_open):
    """``open`` that gives an empty leaderboard.md (the run above writes none)."""
    import io

    def fake(path, *args, **kwargs):
        return io.StringIO("") if str(path).endswith("leaderboard.md") else real_open(path, *args, **kwargs)

    return fake


def test_readme_block_is_regenerated_from_result_files(tmp_path):
    (tmp_path / "results" / "toy").mkdir(parents=True)
    (tmp_path / "results" / "toy" / "leaderboard.md").write_text("### toy\n| a |\n")
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{leaderboard.README_START}\nold\n{leaderboard.README_END}\noutro\n")
    leaderboard.update_readme(readme, tmp_path / "results")
    text = readme.read_text()
    assert "### toy" in text and "old" not in text and text.startswith("intro") and text.endswith("outro\n")


def test_ingest_takes_a_tar_archive_and_leaves_out_non_run_jsons(tmp_path, capsys):
    import tarfile

    import numpy as np

    made = tmp_path / "made"
    made.mkdir()
    run = {"model": "MACRec", "epochs": 40, "seed": 2020, "wall_time_s": 1.0, "machine": "NVIDIA H200 (CUDA)",
           "test_result": {m: 0.1 for m in leaderboard.METRICS}}
    (made / "MACRec-Instruments-1.json").write_text(json.dumps(run))
    np.savez_compressed(made / "MACRec-Instruments-1.ranks.npz", users=np.array(["u1"]), rank=np.array([1]))
    (made / "profile_MACRec_Instruments.json").write_text(json.dumps({"model": "MACRec", "speedup": 3.0}))
    archive = tmp_path / "runs.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(made, arcname=".")
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    targets = leaderboard.ingest([archive], runs_dir)
    assert [os.path.basename(t) for t in targets] == ["MACRec-e40-seed2020.json"]
    assert (runs_dir / "MACRec-e40-seed2020.ranks.npz").is_file()
    assert sorted(os.listdir(runs_dir)) == ["MACRec-e40-seed2020.json", "MACRec-e40-seed2020.ranks.npz"]
    assert "profile_MACRec_Instruments.json: not a run result" in capsys.readouterr().err


def test_result_jsons_are_strict_json(workdir):
    """RecBole's -inf best score (a run never validated) is written as null, never as the
    -Infinity that strict JSON readers reject; ingest mends files written before that."""
    from recbole_macrec.files import write_json
    from recbole_macrec.leaderboard import ingest

    def strict_load(path):
        return json.loads(open(path).read(), parse_constant=lambda name: pytest.fail(f"{path}: {name}"))

    write_json(workdir / "a.json", {"best_valid_score": float("-inf"), "x": [float("nan"), 1.5], "y": {"z": 2}})
    assert strict_load(workdir / "a.json") == {"best_valid_score": None, "x": [None, 1.5], "y": {"z": 2}}
    old = {"model": "TIGER", "epochs": 1, "seed": 2020, "best_valid_score": float("-inf"),
           "test_result": {m: 0.1 for m in leaderboard.METRICS}}
    (workdir / "old").mkdir()
    (workdir / "old" / "TIGER-x.json").write_text(json.dumps(old))
    (workdir / "runs").mkdir()
    [target] = ingest([str(workdir / "old")], str(workdir / "runs"))
    assert strict_load(target) == {**old, "best_valid_score": None, "label": "TIGER"}


def _hand_run(runs_dir, label, seed, ranks, model="M"):
    """A finished run of ``label`` whose users u0.. have the given target ranks (0 = not listed)."""
    import numpy as np

    run = {"model": model, "label": label, "epochs": 1, "seed": seed, "wall_time_s": 1.0, "machine": "m",
           "settings_digest": "d", "test_result": {m: 0.1 for m in leaderboard.METRICS}}
    path = leaderboard.run_path(str(runs_dir), label, seed)
    with open(path, "w") as f:
        json.dump(run, f)
    np.savez_compressed(path[: -len(".json")] + ".ranks.npz", users=np.array([f"u{i}" for i in range(len(ranks))]),
                        rank=np.array(ranks))


def test_compare_pairs_rows_by_label_on_hand_made_ranks(tmp_path):
    import numpy as np

    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    a = [1, 2, 0, 1, 3, 1, 0, 2]
    b = [0, 2, 5, 0, 0, 11, 1, 4]   # 11 is outside the top 10: scores 0
    _hand_run(runs_dir, "A one", 2020, a)
    _hand_run(runs_dir, "B (two)", 2020, b)
    runs = leaderboard.load_runs(str(runs_dir))
    rows = leaderboard.aggregate(runs)
    ndcg = lambda r: 1 / np.log2(r + 1) if 0 < r <= 10 else 0.0
    expected = np.mean([ndcg(x) - ndcg(y) for x, y in zip(a, b)])
    [test] = leaderboard.comparisons(runs, rows, leaderboard.parse_comparisons(["A one | B (two)"]))
    assert test["users"] == 8 and test["mean_difference"] == pytest.approx(expected)
    assert 0 < test["t_test_p"] < 1 and 0 < test["wilcoxon_p"] < 1
    md = leaderboard.markdown("toy", rows, None, {}, [], [test])
    assert f"| A one | B (two) | 8 | {expected:+.4f} |" in md
    with pytest.raises(SettingError, match="no row labelled 'C'"):
        leaderboard.comparisons(runs, rows, [("A one", "C")])
    with pytest.raises(SettingError, match="two row labels"):
        leaderboard.parse_comparisons(["A one"])


def test_an_unknown_compare_name_stops_the_leaderboard_before_any_run(tiny_dataset, workdir, monkeypatch):
    monkeypatch.setattr(leaderboard.cli, "run_entry", lambda *a: pytest.fail("nothing may run"))
    with pytest.raises(SystemExit, match="no row or model 'Nope'"):
        leaderboard.main(_args(tiny_dataset, workdir / "lb", models="Pop") + ["--compare", "Pop|Nope"])


def test_compare_names_a_row_by_its_model_when_the_model_has_one_row(tmp_path):
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    _hand_run(runs_dir, "LCRec (small LM from scratch)", 2020, [1, 0, 2, 1], model="LCRec")
    _hand_run(runs_dir, "TIGER", 2020, [0, 0, 1, 3], model="TIGER")
    _hand_run(runs_dir, "MACRec", 2020, [1, 1, 1, 1], model="MACRec")
    _hand_run(runs_dir, "MACRec w/o L_con", 2020, [2, 2, 2, 2], model="MACRec")
    runs = leaderboard.load_runs(str(runs_dir))
    rows = leaderboard.aggregate(runs)
    [test] = leaderboard.comparisons(runs, rows, [("LCRec", "TIGER")])
    assert (test["best"], test["runner_up"]) == ("LCRec (small LM from scratch)", "TIGER")
    [test] = leaderboard.comparisons(runs, rows, [("MACRec", "TIGER")])   # the label wins over the model
    assert test["best"] == "MACRec"
    with pytest.raises(SettingError, match="no row labelled 'BERT4Rec'"):
        leaderboard.comparisons(runs, rows, [("BERT4Rec", "TIGER")])


def test_a_killed_leaderboard_run_resumes_from_its_saved_state(tiny_dataset, workdir, monkeypatch):
    """A run the leaderboard started keeps its state in <out>/checkpoints/<row>-seed<seed>/; the
    next leaderboard call hands it to the runner as --resume, and refuses, before anything runs,
    a state made with other settings (unless --rerun)."""
    from recbole_macrec.leaderboard import runs

    out = workdir / "lb"
    args = _args(tiny_dataset, out, models="SASRec", seeds=1) + ["epochs=2"]
    leaderboard.main(args)
    folder = runs.checkpoint_dir(str(out / "runs"), "SASRec", 2020)
    state = runs.saved_state(folder)
    assert state is not None and state.startswith(folder)
    os.remove(out / "runs" / "SASRec-seed2020.json")   # as if killed after its last epoch
    seen = []
    import recbole_macrec.quick_start as quick_start

    original = quick_start.run_recbole
    monkeypatch.setattr(quick_start, "run_recbole", lambda *a, **k: seen.append(k["config_dict"]["resume"]) or original(*a, **k))
    leaderboard.main(args)
    assert seen == [state]
    board = json.loads((out / "leaderboard.json").read_text())
    assert board["runs"][0]["resumed_at_epoch"] == 2
    os.remove(out / "runs" / "SASRec-seed2020.json")
    monkeypatch.setattr(leaderboard.cli, "run_entry", lambda *a: pytest.fail("nothing may run"))
    with pytest.raises(SystemExit, match="a killed run of this row made with other settings"):
        leaderboard.main(_args(tiny_dataset, out, models="SASRec", seeds=1) + ["epochs=3"])


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
