import pytest
import torch

from conftest import ROOT, assert_training_lowers_loss, build_model, tiny_config_dict, training_batch, write_codes
from recbole_macrec.errors import SettingError
from recbole_macrec.model.macrec import implicit_alignment_loss, published_fusion
from recbole_macrec.model.packing import IGNORE, pad_cat, segment_token_means
from recbole_macrec.model.vocab import EOS
from recbole_macrec.trainer.generative_trainer import GenerativeTrainer

CROSS_TASKS = {"item_v1_to_v2", "item_v2_to_v1", "seqrec_v1_to_v2", "seqrec_v2_to_v1"}


@pytest.fixture
def macrec(tiny_dataset):
    write_codes(tiny_dataset / "tiny")
    model, config, data = build_model("MACRec", tiny_dataset)
    return model, config, data


def _hand_batch(model):
    from recbole.data.interaction import Interaction

    return Interaction({"item_id_list": torch.tensor([[3, 5, 0], [7, 0, 0]]),
                        "item_length": torch.tensor([2, 1]), "item_id": torch.tensor([9, 4])})


def test_each_task_source_and_target_on_hand_built_batch(macrec):
    model, _, _ = macrec
    batch = _hand_batch(model)
    T = lambda view, i: model.item_tokens(view, torch.tensor([i]))[0].tolist()
    p = model.vocab.task_ids
    expected = {
        "seqrec": ([p["seqrec"], *T("text", 3), *T("text", 5), EOS], [*T("text", 9), EOS]),
        "seqrec_v2": ([p["seqrec_v2"], *T("image", 3), *T("image", 5), EOS], [*T("image", 9), EOS]),
        "item_v1_to_v2": ([p["item_v1_to_v2"], *T("text", 9), EOS], [*T("image", 9), EOS]),
        "item_v2_to_v1": ([p["item_v2_to_v1"], *T("image", 9), EOS], [*T("text", 9), EOS]),
        "seqrec_v1_to_v2": ([p["seqrec_v1_to_v2"], *T("text", 3), *T("text", 5), EOS], [*T("image", 9), EOS]),
        "seqrec_v2_to_v1": ([p["seqrec_v2_to_v1"], *T("image", 3), *T("image", 5), EOS], [*T("text", 9), EOS]),
    }
    assert set(model.tasks) == set(expected)
    for task, (src0, tgt0) in expected.items():
        src, mask, tgt = _rows(model, task, batch)
        assert src[0].tolist() == src0, task
        assert tgt[0].tolist() == tgt0, task
        assert int(mask[0].sum()) == len(src0)
    # the second row (history of one item) is padded after its eos
    src, mask, _ = _rows(model, "seqrec", batch)
    assert src[1].tolist()[:5] == [p["seqrec"], *T("text", 7), EOS] and not mask[1, 5:].any()
    assert len(set(p.values())) == 7     # every known task, seqrec_cross included, has its prompt


def _rows(model, task, batch, max_len=None):
    """``(source, attention mask, target)`` of ``task`` for ``batch``."""
    src, target = model.task_rows(task, batch, max_len)
    return src, src.ne(0), target


def test_released_task_names_are_aliases(tiny_dataset):
    write_codes(tiny_dataset / "tiny")
    released = ["seqrec", "seqimage", "item2image", "image2item", "seqitem2image", "seqimage2item"]
    model, _, _ = build_model("MACRec", tiny_dataset, gr_tasks=released, gr_task_weights={"item2image": 0.5})
    assert model.tasks == ["seqrec", "seqrec_v2", "item_v1_to_v2", "item_v2_to_v1", "seqrec_v1_to_v2",
                           "seqrec_v2_to_v1"]
    assert model.task_weights["item_v1_to_v2"] == 0.5


def test_implicit_loss_is_symmetric_and_vanishes_for_aligned_pairs():
    torch.manual_seed(0)
    a, b = torch.randn(8, 16), torch.randn(8, 16)
    assert implicit_alignment_loss(a, b, 0.1) == pytest.approx(float(implicit_alignment_loss(b, a, 0.1)))
    one_way = implicit_alignment_loss(a, b, 0.1, bidirectional=False)
    assert one_way != pytest.approx(float(implicit_alignment_loss(b, a, 0.1, bidirectional=False)))
    assert implicit_alignment_loss(a, 3 * a, 0.01) < 1e-4
    assert implicit_alignment_loss(a, b, 0.01) > 1.0


def test_published_fusion_on_hand_made_lists():
    inf = float("-inf")
    items_text = torch.tensor([[1, 2, 3]])
    scores_text = torch.tensor([[-0.1, -0.5, -0.9]])
    items_image = torch.tensor([[3, 4, -1]])
    scores_image = torch.tensor([[-0.2, -0.3, inf]])
    fused = published_fusion(items_text, scores_text, items_image, scores_image, 6)[0]
    # item 3 is in both lists: (-0.9 - 0.2) / 2 + 1 = 0.45 ranks first; then 1, 4, 2
    assert fused.tolist() == pytest.approx([inf, -0.1, -0.5, 0.45, -0.3, inf])
    assert fused.argsort(descending=True)[:4].tolist() == [3, 1, 4, 2]


def test_full_sort_predict_fuses_both_views(macrec):
    model, _, data = macrec
    model.eval()
    batch = next(iter(data[2]))[0][torch.arange(3)]
    matrix = model.full_sort_predict(batch)
    text = model.beam_search(batch, "text")
    image = model.beam_search(batch, "image")
    expected = published_fusion(*text, *image, model.n_items)
    torch.testing.assert_close(matrix, expected)
    model.fusion = "mean"
    mean = model.full_sort_predict(batch)
    finite = torch.isfinite(mean)
    assert torch.equal(finite, torch.isfinite(expected))
    r, i = finite.nonzero()[0].tolist()
    both = (model.teacher_forced_scores(batch[torch.tensor([r])], "text", torch.tensor([i]))
            + model.teacher_forced_scores(batch[torch.tensor([r])], "image", torch.tensor([i]))) / 2
    assert mean[r, i] == pytest.approx(float(both), abs=1e-5)


def _losses(model, batch):
    torch.manual_seed(0)
    model.eval()  # no dropout: terms are comparable across configurations
    return {k: float(v) for k, v in model.task_losses(batch).items()}


@pytest.mark.parametrize("ablation,removed", [
    ("wo_implicit", {"implicit"}),
    ("wo_explicit", CROSS_TASKS),
])
def test_model_ablation_switch_removes_exactly_its_term(tiny_dataset, ablation, removed):
    import yaml

    write_codes(tiny_dataset / "tiny")
    full, _, data = build_model("MACRec", tiny_dataset)
    batch = next(iter(data[0]))
    switch = yaml.safe_load((ROOT / "properties" / "ablation" / f"{ablation}.yaml").read_text())
    ablated, _, _ = build_model("MACRec", tiny_dataset, **switch)
    full_losses, ablated_losses = _losses(full, batch), _losses(ablated, batch)
    assert set(full_losses) - set(ablated_losses) == removed
    for term in ablated_losses:
        assert ablated_losses[term] == pytest.approx(full_losses[term], rel=1e-5), term


@pytest.mark.parametrize("ablation,removed", [("wo_con", {"con2", "con3"}), ("wo_align", {"align"})])
def test_prestage_ablation_switch_removes_exactly_its_term(ablation, removed):
    import yaml

    from recbole_macrec.quantization.kmeans import pseudo_labels
    from recbole_macrec.quantization.train import QuantizerParams, batch_loss, build_models

    switch = yaml.safe_load((ROOT / "properties" / "ablation" / f"{ablation}.yaml").read_text())
    small = dict(codebook_size=4, e_dim=8, encoder_layers=(16,), projection_dim=8, pseudo_label_k=4)
    params = QuantizerParams(**small)
    ablated = QuantizerParams(**small, **{k[4:]: tuple(v) if isinstance(v, list) else v
                                          for k, v in switch.items() if k.startswith("sid_")})
    torch.manual_seed(0)
    views = {"text": torch.randn(32, 6), "image": torch.randn(32, 5)}
    models = build_models(views, params, "macrec", "cpu")
    labels = {k: torch.tensor(pseudo_labels(v.numpy(), 4, 0)) for k, v in views.items()}
    idx = torch.arange(32)
    outputs = {k: models[k](views[k][idx]) for k in models}
    _, full = batch_loss(outputs, labels, idx, params, "macrec", torch.Generator().manual_seed(0))
    _, cut = batch_loss(outputs, labels, idx, ablated, "macrec", torch.Generator().manual_seed(0))
    assert set(full) - set(cut) == removed
    for term in cut:
        assert float(cut[term]) == pytest.approx(float(full[term])), term


def _one_task_loss(model, src, mask, target):
    """Reference: the task alone, plain mean token cross-entropy."""
    logits = model.t5(input_ids=src, attention_mask=mask, decoder_input_ids=model.t5._shift_right(target)).logits
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))


def test_packed_tasks_equal_one_forward_per_task(macrec):
    model, _, data = macrec
    model.eval()
    batch = next(iter(data[0]))
    assert model.task_groups(model.tasks) == [["seqrec", "seqrec_v2", "seqrec_v1_to_v2", "seqrec_v2_to_v1"],
                                              ["item_v1_to_v2", "item_v2_to_v1"]]
    packed = model.task_losses(batch)
    for task in model.tasks:
        assert float(packed[task]) == pytest.approx(float(_one_task_loss(model, *_rows(model, task, batch))),
                                                    rel=1e-5), task
    # different source and target widths in one pass: padding must carry no loss and no attention
    seq, item = _rows(model, "seqrec", batch), _rows(model, "item_v1_to_v2", batch)
    item = (item[0], item[1], item[2][:, 2:])
    rows = (pad_cat([seq[0], item[0]], 0), pad_cat([seq[2], item[2]], IGNORE))
    both = segment_token_means(*model.token_losses(rows), [len(seq[0]), len(item[0])])
    assert float(both[0]) == pytest.approx(float(_one_task_loss(model, *seq)), rel=1e-5)
    assert float(both[1]) == pytest.approx(float(_one_task_loss(model, *item)), rel=1e-5)


def test_implicit_states_of_both_views_equal_separate_encoder_passes(macrec):
    model, _, _ = macrec
    model.eval()
    items = torch.tensor([1, 4, 9])
    pooled = model.pooled_item_states(items)
    for v, view in enumerate(model.views):
        tok = model.item_tokens(view, items)
        src = torch.cat([tok, torch.full((3, 1), EOS)], 1)
        alone = model.t5.get_encoder()(input_ids=src).last_hidden_state.mean(1)
        torch.testing.assert_close(pooled[v], alone, rtol=1e-5, atol=1e-6)


def test_a_few_steps_lower_the_multitask_loss(macrec):
    model, config, data = macrec
    assert_training_lowers_loss(model, training_batch(model, config, data))


def test_mql4grec_preset(tiny_dataset):
    write_codes(tiny_dataset / "tiny")
    model, config, _ = build_model("MQL4GRec", tiny_dataset)
    assert model.implicit_weight == 0
    assert model.tasks == ["seqrec", "seqrec_v2", "item_v1_to_v2", "item_v2_to_v1", "seqrec_cross"]
    from recbole_macrec.config import Config

    assert Config(model="MQL4GRec", dataset="tiny", config_dict=tiny_config_dict(tiny_dataset))["sid_method"] == "rqvae_sinkhorn"
    assert "pre-training" in type(model).__doc__


def test_macrec_runs_end_to_end_from_the_script(tiny_dataset, monkeypatch):
    """`run_recbole.py --model=MACRec` on a tiny dataset: the macrec pre-stage, training, test."""
    import json
    import sys

    import run_recbole

    args = ["run_recbole.py", "--model=MACRec", "--dataset=tiny", f"--data_path={tiny_dataset}",
            "--sid_views=['text','collab']", "--text_view_fields=['title','class']", "--view_dim=8",
            "--sid_num_levels=3", "--sid_codebook_size=4", "--sid_e_dim=8", "--sid_encoder_layers=[16]",
            "--sid_epochs=2", "--sid_batch_size=16", "--sid_pseudo_label_k=4", "--sid_con_weights=[0,0.1,0.1]",
            "--sid_projection_dim=8", "--sid_kmeans_iters=10",
            "--d_model=16", "--d_kv=8", "--d_ff=32", "--num_layers=1", "--num_decoder_layers=1",
            "--num_heads=2", "--epochs=1", "--train_batch_size=64", "--eval_batch_size=16",
            "--show_progress=False", "--state=WARNING", "--use_gpu=False",
            "--load_col={'inter':['user_id','item_id','timestamp'],'item':['item_id','title','class']}"]
    monkeypatch.setattr(sys, "argv", args)
    result = run_recbole.main(args[1:])
    assert result["model"] == "MACRec"
    saved = json.loads(open(result["result_file"]).read())
    assert 0 <= saved["test_result"]["ndcg@10"] <= 1 and saved["test_result"] == result["test_result"]


def _mixture_batch(model, data, size=64, seed=0):
    """A mixture step of the released loader holding rows of every task."""
    from recbole_macrec.data.device_loader import TASK_FIELD, TaskMixtureLoader

    fields = {"seq": model.ITEM_SEQ, "length": model.ITEM_SEQ_LEN, "item": model.POS_ITEM_ID}
    loader = TaskMixtureLoader(data[0], "cpu", fields, model.task_mixture(), model.n_items, group=1, seed=seed)
    loader.batch_size = size
    batch = next(iter(loader))
    assert set(batch[TASK_FIELD].tolist()) == set(range(len(model.mixture_tasks)))
    return batch


def _loss_row_by_row(model, batch):
    """Reference: each row alone as its task, weighted token cross-entropy summed, / tokens."""
    from recbole_macrec.data.device_loader import TASK_FIELD

    total, tokens = 0.0, 0
    for r in range(len(batch)):
        row = batch[torch.tensor([r])]
        task = model.mixture_tasks[int(row[TASK_FIELD])]
        src, mask, target = _rows(model, task, row, max(1, int(row[model.ITEM_SEQ_LEN])))
        logits = model.t5(input_ids=src, attention_mask=mask, decoder_input_ids=model.t5._shift_right(target)).logits
        ce = torch.nn.functional.cross_entropy(logits[0], target[0], reduction="sum")
        total, tokens = total + model.task_weights[task] * float(ce), tokens + target.shape[1]
    return total / tokens


@pytest.mark.parametrize("weights", [None, {"seqrec": 2.0, "item_v1_to_v2": 0.5}])
def test_mixture_step_loss_is_the_mean_over_its_target_tokens(tiny_dataset, weights):
    write_codes(tiny_dataset / "tiny")
    model, _, data = build_model("MACRec", tiny_dataset, implicit_weight=0.0, gr_task_weights=weights)
    model.eval()
    batch = _mixture_batch(model, data)
    assert float(model.calculate_loss(batch)) == pytest.approx(_loss_row_by_row(model, batch), rel=1e-5)


def test_mixture_implicit_term_pairs_each_item_rows_source_and_target_ids(tiny_dataset):
    from recbole_macrec.data.device_loader import TASK_FIELD
    from recbole_macrec.model.macrec import implicit_alignment_loss

    write_codes(tiny_dataset / "tiny")
    model, _, data = build_model("MACRec", tiny_dataset)
    model.eval()
    batch = _mixture_batch(model, data)
    losses = model.mixture_losses(batch)[0]
    a, b = [], []
    for r in range(len(batch)):
        task = model.mixture_tasks[int(batch[TASK_FIELD][r])]
        if task in ("item_v1_to_v2", "item_v2_to_v1"):
            item = batch[model.POS_ITEM_ID][r:r + 1]
            src, tgt = ("text", "image") if task == "item_v1_to_v2" else ("image", "text")
            a.append(model.pooled_states(model.target_tokens(src, item)))
            b.append(model.pooled_states(model.target_tokens(tgt, item)))
    expected = implicit_alignment_loss(torch.cat(a), torch.cat(b), 0.1, True)
    assert float(losses["implicit"]) == pytest.approx(model.implicit_weight * float(expected), rel=1e-4)


def test_seqrec_cross_draws_one_direction_per_row(tiny_dataset):
    write_codes(tiny_dataset / "tiny")
    from recbole_macrec.config import Config

    preset = Config(model="MQL4GRec", dataset="tiny", config_dict=tiny_config_dict(tiny_dataset))
    assert preset["learning_rate"] == 5e-4 and "seqrec_cross" in preset["gr_tasks"]
    model, _, data = build_model("MQL4GRec", tiny_dataset)
    batch = next(iter(data[0]))
    torch.manual_seed(0)
    src, _, target = _rows(model, "seqrec_cross", batch)
    a_src, _, a_tgt = _rows(model, "seqrec_v1_to_v2", batch)
    b_src, _, b_tgt = _rows(model, "seqrec_v2_to_v1", batch)
    from_text = [torch.equal(t, x) for t, x in zip(target, a_tgt)]
    assert 0 < sum(from_text) < len(batch)
    for r, text in enumerate(from_text):
        same_src, same_tgt = (a_src, a_tgt) if text else (b_src, b_tgt)
        assert torch.equal(target[r], same_tgt[r])
        assert torch.equal(src[r, 1:], same_src[r, 1:]) and src[r, 0] == model.vocab.task_ids["seqrec_cross"]


@pytest.mark.parametrize("setting,match", [
    ({"gr_task_mix": "shuffled"}, "gr_task_mix must be one of released, per_batch"),
    ({"gr_task_weights": {"seqrec": 1.0, "seqtext": 2.0}}, "gr_task_weights names 'seqtext'"),
])
def test_bad_task_settings_are_named(tiny_dataset, setting, match):
    write_codes(tiny_dataset / "tiny")
    with pytest.raises(ValueError, match=match):
        build_model("MACRec", tiny_dataset, **setting)


def test_item_tasks_with_one_view_are_an_error(tiny_dataset):
    write_codes(tiny_dataset / "tiny")
    with pytest.raises(ValueError, match="task 'item_v1_to_v2' needs two views"):
        build_model("TIGER", tiny_dataset, gr_tasks=["seqrec", "item2image"])


def test_macrec_with_one_view_stops_before_any_work_naming_the_setting(tiny_dataset):
    from recbole_macrec.quick_start import run_recbole

    with pytest.raises(SettingError, match=r"MACRec needs exactly two item views, and sid_views = \['text'\] gives 1"
                                           r".*--sid_views=\"\[text,collab\]\".*--sid_method=macrec"):
        run_recbole("MACRec", "tiny", config_dict=tiny_config_dict(tiny_dataset, sid_method="import",
                                                                   sid_views=["text"]))
    assert not list(tiny_dataset.glob("tiny/sid-*"))


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
