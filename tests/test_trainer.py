"""GenerativeTrainer: the schedule sized on the steps actually taken, gradient accumulation equal to
one larger step, selection settings, the training-time budget and the runner's timing record."""
import json

import pytest
import torch

from conftest import build_model, tiny_config_dict, write_codes
from recbole_macrec.errors import SettingError
from recbole_macrec.trainer.generative_trainer import GenerativeTrainer, epochs_for_budget


@pytest.mark.parametrize("budget, epoch_s, max_epochs, eval_step, expected", [
    (100, 7, 200, 5, (10, 5)),     # 14 fit, cut to a multiple of eval_step: the last one is validated
    (100, 7, 200, 20, (14, 14)),   # fewer than eval_step fit: validate once, at the end
    (100, 7, 8, 5, (5, 5)),        # never more than asked
    (3, 7, 200, 5, (1, 1)),        # a budget shorter than one epoch still trains one
    (100, 7, 200, 0, (14, 0)),     # no validation: nothing to align
])
def test_epochs_for_budget(budget, epoch_s, max_epochs, eval_step, expected):
    assert epochs_for_budget(budget, epoch_s, max_epochs, eval_step) == expected


def _fit_weights(tiny_dataset, budget, length_group, probe_seconds=None, monkeypatch=None):
    model, config, data = build_model("TIGER", tiny_dataset, train_batch_size=8, epochs=2, eval_step=1,
                                      dropout_rate=0.2, gr_length_group=length_group,
                                      gr_train_budget_s=budget)
    trainer = GenerativeTrainer(config, model)
    if probe_seconds is not None:
        monkeypatch.setattr(trainer, "probe_step_seconds", lambda batches: probe_seconds)
    trainer.fit(data[0], saved=False)
    return torch.cat([p.detach().flatten() for p in model.parameters()]), trainer, config


@pytest.mark.parametrize("length_group", [4, 0])   # device loader, RecBole's loader
def test_budget_probe_leaves_no_trace(tiny_dataset, length_group):
    """A budget that fits every asked epoch trains exactly as a run without one: the probe's
    steps (dropout, optimiser, batch order) are all undone."""
    write_codes(tiny_dataset / "tiny")
    plain, _, _ = _fit_weights(tiny_dataset, None, length_group)
    probed, trainer, _ = _fit_weights(tiny_dataset, 1e9, length_group)
    assert trainer.budget_plan["epochs"] == 2 and trainer.budget_plan["probe_s_per_step"] > 0
    assert torch.equal(plain, probed)


def test_budget_sets_the_epochs_trained(tiny_dataset, monkeypatch):
    write_codes(tiny_dataset / "tiny")
    _, trainer, config = _fit_weights(tiny_dataset, 1.0, 4, probe_seconds=10.0, monkeypatch=monkeypatch)
    assert trainer.budget_plan["epochs"] == 1 and config["epochs"] == 1
    assert len(trainer.train_loss_dict) == 1


def test_run_records_timing_and_budget(tiny_dataset):
    from recbole_macrec.quick_start import run_recbole

    write_codes(tiny_dataset / "tiny")
    result = run_recbole("TIGER", "tiny", config_dict=tiny_config_dict(
        tiny_dataset, **{"sid_method": "import", "sid_views": ["text", "image"], "d_model": 16, "d_kv": 8,
                         "d_ff": 32, "num_layers": 1, "num_decoder_layers": 1, "num_heads": 2,
                         "epochs": 3, "eval_step": 1, "gr_train_budget_s": 1e9}))
    saved = json.loads(open(result["result_file"]).read())
    timing = saved["timing"]
    assert saved["epochs"] == saved["epochs_run"] == saved["train_budget"]["epochs"] == 3
    assert len(timing["train_epoch_s"]) == 3 and len(timing["valid_s"]) == 3
    assert all(t > 0 for t in timing["train_epoch_s"] + timing["valid_s"]) and timing["test_s"] > 0


@pytest.mark.parametrize("batch_size", [64, 7])   # 184 rows: an epoch of 3 batches, one of 27
def test_probe_times_a_representative_step(tiny_dataset, monkeypatch, batch_size):
    """On a clock that a step advances by its batch's rows, the probe returns the mean rows of an
    epoch's batch when the epoch is short (its small remainder batch counted once), and the rows
    of full batches (at most one remainder among them) when it is long."""
    from types import SimpleNamespace

    from recbole_macrec.trainer import generative_trainer

    write_codes(tiny_dataset / "tiny")
    model, config, data = build_model("TIGER", tiny_dataset, train_batch_size=batch_size, gr_length_group=4)
    trainer = GenerativeTrainer(config, model)
    clock = [0.0]

    def step(interaction, loss_func=None):
        clock[0] += len(interaction)

    monkeypatch.setattr(trainer, "train_step", step)
    monkeypatch.setattr(generative_trainer, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    batches = trainer.batches_of(data[0])
    rows, steps = len(batches.data), len(batches)
    assert rows % batch_size, "the epoch needs a remainder batch for this test"
    probe = trainer.probe_step_seconds(batches)
    if steps < generative_trainer.PROBE_WARMUP_STEPS + generative_trainer.PROBE_STEPS:
        assert probe == pytest.approx(rows / steps)
    else:
        full = batch_size * generative_trainer.PROBE_STEPS
        assert probe in (pytest.approx(batch_size), pytest.approx((full - batch_size + rows % batch_size)
                                                                  / generative_trainer.PROBE_STEPS))


def _lr_per_step(trainer):
    seen = []
    trainer.optimizer.register_step_pre_hook(lambda opt, a, k: seen.append(opt.param_groups[0]["lr"]))
    return seen


@pytest.mark.parametrize("warmup_ratio", [0.01, 0.1])
def test_schedule_spans_the_mixture_steps_actually_trained(tiny_dataset, warmup_ratio):
    """MACRec's mixture holds ~4x as many batches as RecBole's loader: the cosine schedule must
    end with the last of them (with 1% warm-up, after epoch 1 of 2 the LR is half the peak), and
    the warm-up lasts warmup_ratio of the steps trained."""
    write_codes(tiny_dataset / "tiny")
    model, config, data = build_model("MACRec", tiny_dataset, train_batch_size=16, epochs=2,
                                      warmup_ratio=warmup_ratio, learning_rate=0.01)
    trainer = GenerativeTrainer(config, model)
    lrs = _lr_per_step(trainer)
    trainer.fit(data[0], saved=False)
    steps = len(trainer.batches_of(data[0]))
    assert steps > 3 * len(data[0])   # the mixture is longer than RecBole's loader
    assert len(lrs) == 2 * steps == trainer.steps_taken
    if warmup_ratio == 0.01:
        assert trainer.curve[0]["lr_end"] == pytest.approx(0.005, rel=0.1)
    assert 0 < lrs[-1] < 1e-4 and trainer.curve[1]["lr_end"] == 0   # the schedule ends with the last step
    peak = max(range(len(lrs)), key=lrs.__getitem__)
    assert peak + 1 == pytest.approx(warmup_ratio * 2 * steps, abs=1)
    assert all(a < b for a, b in zip(lrs[:peak], lrs[1:peak + 1]))
    assert all(a >= b for a, b in zip(lrs[peak:], lrs[peak + 1:])) and lrs[-1] < lrs[peak]


@pytest.mark.parametrize("model_name", ["TIGER", "MACRec"])
def test_gradient_accumulation_equals_one_step_of_the_whole_batch(tiny_dataset, model_name):
    write_codes(tiny_dataset / "tiny")
    grads = {}
    for accum in (1, 4):
        model, config, data = build_model(model_name, tiny_dataset, train_batch_size=32, gr_grad_accum=accum,
                                          implicit_weight=0.0)
        trainer = GenerativeTrainer(config, model)
        batch = next(iter(trainer.batches_of(data[0])))
        trainer.clip_grad_norm = None
        trainer.optimizer.step = lambda: None   # keep the weights: compare the gradients
        loss = trainer.train_step(batch)
        grads[accum] = (float(loss), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert grads[4][0] == pytest.approx(grads[1][0], rel=1e-5)
    torch.testing.assert_close(grads[4][1], grads[1][1], rtol=1e-4, atol=1e-7)


def test_gradient_accumulation_that_does_not_divide_the_batch_is_named(tiny_dataset):
    from recbole_macrec.quick_start import run_recbole

    write_codes(tiny_dataset / "tiny")
    with pytest.raises(SettingError, match="gr_grad_accum=3 does not divide train_batch_size=32"):
        run_recbole("TIGER", "tiny", config_dict=tiny_config_dict(
            tiny_dataset, sid_method="import", sid_views=["text", "image"], train_batch_size=32, gr_grad_accum=3))


@pytest.mark.parametrize("setting, match", [
    ({"gr_valid_metric": "NDCG@50"}, "gr_valid_metric='NDCG@50' is neither 'loss' nor a metric"),
    ({"valid_metric": "MRR@10"}, "valid_metric='MRR@10' is neither"),
])
def test_selection_that_names_an_unknown_metric_is_named(tiny_dataset, setting, match):
    from recbole_macrec.quick_start import run_recbole

    write_codes(tiny_dataset / "tiny")
    with pytest.raises(SettingError, match=match):
        run_recbole("TIGER", "tiny", config_dict=tiny_config_dict(
            tiny_dataset, sid_method="import", sid_views=["text", "image"], **setting))
