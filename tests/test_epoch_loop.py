"""The epoch loop every run trains with: a run killed at any point (SIGKILL) continues from its
last finished epoch with --resume and ends exactly as the uninterrupted run (a state of another
run, or a truncated one, is a clear error that leaves the file as it was); early stopping counts
strict improvements; every run json carries its learning curve; selection on the validation loss."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from conftest import ROOT, TINY_T5, tiny_config_dict, write_codes
from recbole_macrec.errors import SettingError

EPOCHS = 6


def _settings(tiny_dataset, **extra):
    return tiny_config_dict(tiny_dataset, **{**TINY_T5, "dropout_rate": 0.1, "epochs": EPOCHS, "eval_step": 1,
                                             "stopping_step": 10, "train_batch_size": 16, "implicit_weight": 0.01,
                                             "gr_length_group": 4, **extra})


def _command(workdir, name, settings, *flags):
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(settings))
    return [sys.executable, str(ROOT / "run_recbole.py"), "--model=MACRec", "--dataset=tiny",
            f"--config_files={path}", f"--checkpoint_dir={workdir / name}", f"--results_dir={workdir / name}",
            *flags]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _result(folder):
    (path,) = [p for p in folder.glob("MACRec-tiny-*.json")]
    return json.loads(path.read_text())


def _state_epoch(folder):
    import torch

    states = list(folder.glob("*.state.pth"))
    if not states:
        return -1
    try:
        return torch.load(states[0], weights_only=True)["epoch"]
    except Exception:   # being replaced right now: read it on the next poll
        return -1


def test_a_killed_run_resumes_and_ends_as_the_uninterrupted_run(tiny_dataset, workdir):
    write_codes(tiny_dataset / "tiny")
    settings = _settings(tiny_dataset)
    subprocess.run(_command(workdir, "whole", settings), check=True, env=_env(), cwd=workdir,
                   capture_output=True, timeout=600)
    whole = _result(workdir / "whole")

    killed = subprocess.Popen(_command(workdir, "killed", settings), env=_env(), cwd=workdir,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while _state_epoch(workdir / "killed") < 1 and killed.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    stopped_at = _state_epoch(workdir / "killed")
    assert 1 <= stopped_at < EPOCHS - 1, "the run must be killed mid-training"
    assert not list((workdir / "killed").glob("MACRec-tiny-*.json"))

    subprocess.run(_command(workdir, "killed", settings, f"--resume={workdir / 'killed'}"), check=True,
                   env=_env(), cwd=workdir, capture_output=True, timeout=600)
    resumed = _result(workdir / "killed")
    assert resumed["resumed_at_epoch"] == stopped_at + 1
    assert resumed["test_result"] == whole["test_result"]
    assert resumed["best_valid_result"] == whole["best_valid_result"]
    assert resumed["best_epoch"] == whole["best_epoch"] and resumed["epochs_run"] == EPOCHS
    strip = lambda curve: [{k: v for k, v in c.items() if k != "seconds"} for c in curve]
    assert strip(resumed["curve"]) == strip(whole["curve"])
    assert len(resumed["timing"]["train_epoch_s"]) == EPOCHS
    earlier = resumed["timing"]["wall_s_before_resume"]   # the killed process's part of the wall time
    assert earlier >= sum(resumed["timing"]["train_epoch_s"][:stopped_at + 1])
    assert resumed["wall_time_s"] > earlier + sum(resumed["timing"]["train_epoch_s"][stopped_at + 1:])
    assert "wall_s_before_resume" not in whole["timing"]


def test_a_state_without_a_clock_resumes_with_its_epochs_seconds_as_earlier_wall_time():
    from types import SimpleNamespace

    from recbole_macrec.timing import PhaseTimer

    trainer = SimpleNamespace(_train_epoch=lambda: None, _valid_epoch=lambda: None, device="cpu")
    timer = PhaseTimer(trainer, started=100.0)
    timer.load({"train_epoch_s": [3.0, 4.0], "valid_s": [0.5, 0.25]})
    assert timer.earlier_wall_s == 7.75 and timer.summary()["wall_s_before_resume"] == 7.75
    clocked = PhaseTimer(trainer, started=time.time() - 2.0)
    clocked.load({"train_epoch_s": [3.0], "valid_s": [0.5], "wall_s": 60.0})
    assert 62.0 <= clocked.wall_s() < 70.0
    assert 62.0 <= clocked.state()["wall_s"] < 70.0


def _trained_state(tiny_dataset, workdir, name="first", **extra):
    from recbole_macrec.quick_start import run_recbole

    write_codes(tiny_dataset / "tiny")
    settings = _settings(tiny_dataset, epochs=2, checkpoint_dir=str(workdir / name), **extra)
    run_recbole("MACRec", "tiny", config_dict=settings)
    (state,) = list((workdir / name).glob("*.state.pth"))
    return state, settings


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_resume_into_a_run_of_other_settings_or_seed_is_refused(tiny_dataset, workdir):
    from recbole_macrec.quick_start import run_recbole

    state, settings = _trained_state(tiny_dataset, workdir)
    before = _digest(state)
    with pytest.raises(SettingError, match="other settings"):
        run_recbole("MACRec", "tiny", config_dict={**settings, "learning_rate": 0.01, "resume": str(state)})
    with pytest.raises(SettingError, match="seed 2020, this run has 7"):
        run_recbole("MACRec", "tiny", config_dict={**settings, "seed": 7, "resume": str(state)})
    with pytest.raises(SettingError, match="model 'MACRec', this run has 'TIGER'"):
        run_recbole("TIGER", "tiny", config_dict={**settings, "resume": str(state)})
    assert _digest(state) == before


def test_a_truncated_state_is_a_clear_error_and_stays_as_it_was(tiny_dataset, workdir):
    from recbole_macrec.quick_start import run_recbole

    state, settings = _trained_state(tiny_dataset, workdir)
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    before = _digest(state)
    with pytest.raises(SettingError, match="not a readable run state"):
        run_recbole("MACRec", "tiny", config_dict={**settings, "resume": str(state)})
    assert _digest(state) == before
    with pytest.raises(SettingError, match="holds no run state"):
        run_recbole("MACRec", "tiny", config_dict={**settings, "resume": str(workdir)})


def test_resuming_a_finished_run_trains_nothing_more(tiny_dataset, workdir):
    from recbole_macrec.quick_start import run_recbole

    state, settings = _trained_state(tiny_dataset, workdir)
    first = _result_of(workdir)
    again = run_recbole("MACRec", "tiny", config_dict={**settings, "resume": str(state.parent)})
    saved = json.loads(open(again["result_file"]).read())
    assert saved["test_result"] == first["test_result"] and saved["resumed_at_epoch"] == 2
    assert saved["timing"]["train_epoch_s"] == first["timing"]["train_epoch_s"]


def _result_of(workdir):
    (path,) = list((workdir / "saved" / "results").glob("MACRec-tiny-*.json"))
    return json.loads(path.read_text())


@pytest.mark.parametrize("scores, patience, stops_after", [
    ([0.1, 0.2, 0.2, 0.2, 0.3], 2, 4),      # an equal score is no improvement
    ([0.1, 0.2, 0.3, 0.4], 2, None),
    ([0.3, 0.1, 0.2, 0.3, 0.3], 3, 4),
])
def test_early_stopping_counts_only_strict_improvements(scores, patience, stops_after):
    from recbole_macrec.trainer.epoch_loop import early_stopping_step

    best, waited, stopped = float("-inf"), 0, None
    for i, score in enumerate(scores):
        best, waited, stop, _ = early_stopping_step(score, best, waited, patience)
        if stop:
            stopped = i + 1
            break
    assert stopped == stops_after


def _tiny_run(tiny_dataset, model="TIGER", **extra):
    from recbole_macrec.quick_start import run_recbole

    write_codes(tiny_dataset / "tiny")
    settings = {"sid_method": "import", "sid_views": ["text", "image"], "d_model": 16, "d_kv": 8, "d_ff": 32,
                "num_layers": 1, "num_decoder_layers": 1, "num_heads": 2, "epochs": 3, "eval_step": 1,
                "train_batch_size": 32, "learning_rate": 0.005, **extra}
    result = run_recbole(model, "tiny", config_dict=tiny_config_dict(tiny_dataset, **settings))
    with open(result["result_file"]) as f:
        return json.load(f)


def test_run_json_records_the_learning_curve(tiny_dataset):
    saved = _tiny_run(tiny_dataset, "MACRec")
    curve = saved["curve"]
    assert [c["epoch"] for c in curve] == [0, 1, 2]
    steps = saved["schedule"]["steps_per_epoch"]
    for c in curve:
        assert c["steps"] == steps and c["seconds"] > 0 and c["train_loss"] > 0
        assert c["lr_start"] > c["lr_end"] > 0 or c["epoch"] == 2
        assert set(c["valid_result"]) >= {"ndcg@10", "hit@10"} and c["valid_loss"] > 0
    assert curve[0]["train_loss"] > curve[-1]["train_loss"]
    assert saved["best_epoch"] in (0, 1, 2) and saved["early_stopped"] is False


def test_builtin_model_runs_record_their_curve_too(tiny_dataset):
    saved = _tiny_run(tiny_dataset, "SASRec", epochs=2)
    assert [c["epoch"] for c in saved["curve"]] == [0, 1]
    assert all(c["steps"] > 0 and "ndcg@10" in c["valid_result"] for c in saved["curve"])


def test_selection_on_the_validation_loss(tiny_dataset):
    saved = _tiny_run(tiny_dataset, gr_valid_metric="loss")
    losses = [c["valid_score"] for c in saved["curve"]]
    assert saved["valid_score_bigger"] is False
    assert saved["best_valid_score"] == pytest.approx(min(losses))
    assert saved["best_epoch"] == losses.index(min(losses))
    assert all(set(c["valid_result"]) == {"loss"} for c in saved["curve"])
    assert set(saved["test_result"]) >= {"ndcg@10", "hit@10"}


def test_a_resumed_run_trains_on_the_codes_its_first_part_kept(tiny_dataset, workdir):
    import shutil

    from recbole_macrec.quick_start import run_recbole
    from recbole_macrec.trainer.epoch_loop import codes_copy_of

    state, settings = _trained_state(tiny_dataset, workdir)
    kept = codes_copy_of(str(state))
    first = _result_of(workdir)
    assert os.path.isfile(os.path.join(kept, "tiny.item"))
    # the pre-stage now gives other codes (as on another CPU): two items swap their text codes
    codes_file = tiny_dataset / "tiny" / "tiny.text.codes.json"
    codes = json.loads(codes_file.read_text())
    codes["i0"], codes["i1"] = codes["i1"], codes["i0"]
    codes_file.write_text(json.dumps(codes))
    again = run_recbole("MACRec", "tiny", config_dict={**settings, "resume": str(state.parent)})
    saved = json.loads(open(again["result_file"]).read())
    assert saved["semantic_ids"]["folder"] == kept and saved["test_result"] == first["test_result"]
    shutil.rmtree(kept)   # without its kept codes the run would resume on other codes: refused
    before = _digest(state)
    with pytest.raises(SettingError, match="other semantic IDs"):
        run_recbole("MACRec", "tiny", config_dict={**settings, "resume": str(state.parent)})
    assert _digest(state) == before


def test_a_moved_checkpoint_folder_resumes_from_its_new_place(tiny_dataset, workdir):
    import shutil

    from recbole_macrec.quick_start import run_recbole

    state, settings = _trained_state(tiny_dataset, workdir)
    first = _result_of(workdir)
    moved = workdir / "moved"
    shutil.move(str(state.parent), str(moved))
    again = run_recbole("MACRec", "tiny", config_dict={**settings, "checkpoint_dir": str(moved),
                                                       "resume": str(moved)})
    saved = json.loads(open(again["result_file"]).read())
    assert saved["test_result"] == first["test_result"] and saved["resumed_at_epoch"] == 2
    assert saved["semantic_ids"]["folder"].startswith(str(moved))
