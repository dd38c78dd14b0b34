"""The training recipe: a schedule sized on the steps actually taken, gradient accumulation equal
to one larger step, item rows spread over the mixture's steps, the implicit term without the item
tasks, model selection, and the learning curve every run records."""
import json

import pytest
import torch

from conftest import build_model, tiny_config_dict, write_codes
from recbole_macrec.errors import SettingError
from recbole_macrec.trainer.generative_trainer import GenerativeTrainer


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


def test_mixture_steps_each_hold_the_item_rows_share_of_a_shuffle(tiny_dataset):
    """Length grouping alone would gather the length-1 item rows into a few steps; every step
    must hold its share of them (within one row), as a shuffled mixture does on average."""
    from recbole_macrec.data.device_loader import TASK_FIELD, TaskMixtureLoader

    write_codes(tiny_dataset / "tiny")
    model, config, data = build_model("MACRec", tiny_dataset, train_batch_size=16)
    fields = {"seq": model.ITEM_SEQ, "length": model.ITEM_SEQ_LEN, "item": model.POS_ITEM_ID}
    loader = TaskMixtureLoader(data[0], "cpu", fields, model.task_mixture(), model.n_items, group=50, seed=3,
                               batch_size=16)
    is_item = torch.tensor([kind != "seq" for _, kind in model.task_mixture()])
    batches = list(loader)
    counts = [int(is_item[b[TASK_FIELD]].sum()) for b in batches]
    share = sum(counts) / sum(len(b) for b in batches)
    assert sum(counts) == 2 * (model.n_items - 1)
    assert all(abs(c - share * len(b)) <= 1 for c, b in zip(counts, batches))
    assert all(len(b) <= 16 for b in batches) and len(batches) == len(loader)
    # the history rows are still grouped by length: fewer padded positions than a plain shuffle
    plain = TaskMixtureLoader(data[0], "cpu", fields, model.task_mixture(), model.n_items, group=1, seed=3,
                              batch_size=16)

    def padding(epoch):
        return sum(int(b[model.ITEM_SEQ_LEN].max()) * len(b) - int(b[model.ITEM_SEQ_LEN].sum()) for b in epoch)

    assert padding(batches) < padding(list(plain))


def test_without_item_tasks_the_implicit_term_still_gets_its_pairs(tiny_dataset):
    """w/o explicit removes the four cross-view tasks, not the implicit term: the mixture keeps
    one pair row per item and direction, which carries no generation loss."""
    import yaml

    from conftest import ROOT
    from recbole_macrec.data.device_loader import TASK_FIELD

    write_codes(tiny_dataset / "tiny")
    switch = yaml.safe_load((ROOT / "properties" / "ablation" / "wo_explicit.yaml").read_text())
    model, config, data = build_model("MACRec", tiny_dataset, train_batch_size=64, **switch)
    model.eval()
    entries = model.task_mixture()
    assert entries == [("seqrec", "seq"), ("seqrec_v2", "seq"), ("item_v1_to_v2", "pair"), ("item_v2_to_v1", "pair")]
    trainer = GenerativeTrainer(config, model)
    batch = next(b for b in trainer.batches_of(data[0]) if int((b[TASK_FIELD] >= 2).sum()) > 1)
    losses, tokens = model.mixture_losses(batch)
    assert losses["implicit"] > 0
    history = batch[batch[TASK_FIELD] < 2]
    alone, alone_tokens = model.mixture_losses(history)
    assert float(losses["tasks"]) == pytest.approx(float(alone["tasks"]), rel=1e-5)
    assert int(tokens) == int(alone_tokens)
    # no implicit weight: no pair rows at all
    plain, _, _ = build_model("MACRec", tiny_dataset, implicit_weight=0.0, **switch)
    assert [kind for _, kind in plain.task_mixture()] == ["seq", "seq"]


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
