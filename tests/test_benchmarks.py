"""The benchmarks (profile, training speed, beam vs exact) run as documented, on the CPU."""
import json

import pytest
import torch

from conftest import TINY_T5, build_model, tiny_config_dict, write_codes

import profile_training


def test_flops_per_step_counts_forward_and_backward_of_a_known_product():
    weight = torch.randn(6, 5, requires_grad=True)

    class Trainer:
        def train_step(self, batch):
            (batch @ weight).sum().backward()

    # forward 2*m*k*n; backward: the weight's gradient only (the batch needs none), 2*m*k*n again
    batches = [torch.randn(4, 6), torch.randn(10, 6)]
    assert profile_training.flops_per_step(Trainer(), batches) == (2 * 2 * 4 * 6 * 5 + 2 * 2 * 10 * 6 * 5) / 2


def _profile(tiny_dataset, model_name, *flags):
    """profile_training's report on the tiny dataset (codes imported, tiny T5, batch 16)."""
    write_codes(tiny_dataset / "tiny")
    cfg = tiny_config_dict(tiny_dataset, **{**TINY_T5, "train_batch_size": 16})
    out = tiny_dataset / "profile.json"
    profile_training.main([f"--model={model_name}", "--dataset=tiny", *flags, f"--out={out}", "--set",
                           *[f"{k}={json.dumps(v)}" for k, v in cfg.items()]])
    return json.loads(out.read_text())


def test_profile_reports_new_path_flops_and_speedup(tiny_dataset):
    report = _profile(tiny_dataset, "MACRec", "--batches=3")
    assert set(report["compute_s_per_batch"]) == {"per_task_random", "per_task_grouped",
                                                  "packed_random", "packed_grouped"}
    flops = report["flops"]
    assert flops["per_timed_step"] > 0 and flops["per_epoch"] > flops["per_timed_step"]
    assert flops["achieved_tflop_s"] == pytest.approx(
        flops["per_timed_step"] / report["compute_s_per_batch"]["packed_grouped"] / 1e12)
    assert report["speedup"] > 0


@pytest.mark.parametrize("model_name", ["TIGER", "MACRec"])
def test_epoch_flops_equal_the_count_over_every_batch(tiny_dataset, model_name):
    """The per-length shortcut gives the same epoch FLOPs as counting every batch of the epoch."""
    from recbole_macrec.trainer.generative_trainer import GenerativeTrainer

    write_codes(tiny_dataset / "tiny")
    model, config, data = build_model(model_name, tiny_dataset, train_batch_size=16, gr_length_group=2)
    trainer = GenerativeTrainer(config, model)
    loader = trainer.batches_of(data[0])
    state = loader.generator.get_state()
    every_batch = profile_training.flops_per_step(trainer, list(loader)) * len(loader)
    loader.generator.set_state(state)
    # MACRec's in-batch implicit loss grows with rows squared, which a per-row count cannot see:
    # a batch x batch similarity, small against the T5 passes
    assert profile_training.epoch_flops(trainer, loader) == pytest.approx(
        every_batch, rel=0.02 if model_name == "MACRec" else 1e-6)


def test_flops_only_report(tiny_dataset):
    report = _profile(tiny_dataset, "TIGER", "--flops-only")
    # random batches pad every history to the batch's longest: more work than length-grouped ones
    assert report["flops"]["per_epoch_random_batches"] > report["flops"]["per_epoch"] > 0
    assert "compute_s_per_batch" not in report


def test_beam_benchmark_last_line_reports_identical_lists_equal_scores_and_ratio(capsys):
    import re

    import beam_search_vs_hf

    beam_search_vs_hf.main(["--users=4", "--batch=2", "--items=300", "--codes=", "--device=cpu"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    match = re.fullmatch(r"identical lists: (yes|no); max score difference: (\S+); ratio: ([\d.]+)x", last)
    assert match and match.group(1) == "yes" and float(match.group(2)) < 1e-3


def test_training_speed_benchmark_runs_as_documented(tiny_dataset, workdir):
    import json

    from conftest import TINY_T5, tiny_config_dict

    import training_speed

    write_codes(tiny_dataset / "tiny")
    settings = {**tiny_config_dict(tiny_dataset), **TINY_T5, "train_batch_size": 8}   # dropout 0: comparable losses
    argv = ["--model=TIGER", "--dataset=tiny", "--steps=4", "--rounds=1", "--loss-seeds=2", f"--out={workdir / 'speed.json'}"] \
        + [f"--{k}={json.dumps(v)}" for k, v in settings.items()]
    report = training_speed.main(argv)
    saved = json.loads((workdir / "speed.json").read_text())
    assert saved["speedup"] == report["speedup"] > 0
    assert {"fp32", "contiguous CE", "lean forward", "cheap masks", "fast", "fast, batch x4"} <= set(saved["variants"])
    # dropout off: every variant in fp32 trains the same function
    assert saved["variants"]["lean forward"]["losses"][0] == pytest.approx(saved["variants"]["fp32"]["losses"][0],
                                                                           rel=1e-4)


def test_training_speed_profile_names_where_the_step_goes(tiny_dataset, workdir, capsys):
    import json

    from conftest import TINY_T5, tiny_config_dict

    import training_speed

    write_codes(tiny_dataset / "tiny")
    settings = {**tiny_config_dict(tiny_dataset), **TINY_T5, "train_batch_size": 8}
    argv = ["--model=TIGER", "--dataset=tiny", "--profile=3", f"--out={workdir / 'profile.json'}"] \
        + [f"--{k}={json.dumps(v)}" for k, v in settings.items()]
    training_speed.main(argv)
    saved = json.loads((workdir / "profile.json").read_text())
    assert saved["steps"] == 3 and set(saved["profiles"]) == {"fp32", "fast"}
    for prof in saved["profiles"].values():
        shares = [op["share"] for op in prof["operators"]]
        assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1.0001
        # a T5 step multiplies matrices: the profile must have seen the model's own work
        assert any(op["name"] in ("aten::mm", "aten::addmm", "aten::bmm") for op in prof["operators"])
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("fast: ")


def test_beam_vs_exact_benchmark_runs_as_documented(tiny_dataset, workdir, capsys):
    import beam_vs_exact

    write_codes(tiny_dataset / "tiny")
    settings = {**tiny_config_dict(tiny_dataset), **TINY_T5, "topk": [1, 5, 10]}
    argv = ["--model=TIGER", "--dataset=tiny", "--epochs=1", "--users=15", "--beams=10,40",
            f"--out={workdir / 'beam.json'}"] + [f"--{k}={json.dumps(v)}" for k, v in settings.items()]
    report = beam_vs_exact.main(argv)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("beam recall@10: ") and last.endswith("(15 users)")
    assert set(report["checks"]) == {"10", "20", "40"}   # the configured beam_size is always checked
    assert report["checks"]["40"]["recall_mean"] == 1.0
    saved = json.loads((workdir / "beam.json").read_text())
    assert saved["checks"]["20"]["users"] == 15
