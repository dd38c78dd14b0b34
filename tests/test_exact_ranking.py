"""Exact full-catalogue scoring of the semantic-ID models: every item's score equals scoring it
alone; with a beam as wide as the catalogue, beam search and exact scoring give the same lists
and scores (one view and fused); exact scoring far costlier than the beam is refused before
training; the beam check counts how much of the exact top-k the beam finds."""
import json

import pytest
import torch

from conftest import TINY_T5, build_model, tiny_config_dict, training_batch, write_codes
from recbole_macrec.errors import SettingError

TINY_LM = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
               num_key_value_heads=2, lcrec_text_len=6, learning_rate=0.01)


def _trained(tiny_dataset, name, **extra):
    """A model after a few optimiser steps (its scores are then far from uniform)."""
    write_codes(tiny_dataset / "tiny")
    model, config, data = build_model(name, tiny_dataset, **extra)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    model.train()
    batch = training_batch(model, config, data)
    for _ in range(5):
        optimizer.zero_grad()
        model.calculate_loss(batch).backward()
        optimizer.step()
    model.eval()
    return model, config, data


def _test_batch(data, n=6):
    return next(iter(data[2]))[0][torch.arange(n)]


def _one_by_one(model, batch, view):
    """``[B, n_items]``: each item scored alone by teacher forcing (column 0: -inf)."""
    n = model.n_items
    rows = []
    for r in range(len(batch)):
        scores = model.teacher_forced_scores(batch[torch.tensor([r] * (n - 1))], view, torch.arange(1, n))
        rows.append(torch.cat([torch.tensor([float("-inf")]), scores]))
    return torch.stack(rows)


@pytest.mark.parametrize("name, extra, view", [("TIGER", {}, "text"), ("MACRec", {}, "image"),
                                               ("LCRec", TINY_LM, "text")])
def test_exact_scores_equal_scoring_every_item_alone(tiny_dataset, name, extra, view):
    model, _, data = _trained(tiny_dataset, name, **extra)
    batch = _test_batch(data)
    with torch.no_grad():
        exact = model.exact_item_scores(batch, view)
        alone = _one_by_one(model, batch, view)
    torch.testing.assert_close(exact, alone, atol=1e-5, rtol=0)


def test_exact_scoring_in_small_chunks_equals_one_chunk(tiny_dataset):
    model, _, data = _trained(tiny_dataset, "TIGER")
    batch = _test_batch(data, 8)
    whole = model.exact_item_scores(batch, "text")
    model.exact_rows = 1   # one user per chunk
    torch.testing.assert_close(model.exact_item_scores(batch, "text"), whole, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name, extra", [("TIGER", {}), ("MACRec", {}), ("LCRec", TINY_LM)])
def test_a_beam_as_wide_as_the_catalogue_is_exact(tiny_dataset, name, extra):
    model, _, data = _trained(tiny_dataset, name, **extra)
    model.beam_size = model.n_items + 3   # wider than the catalogue: the search is exhaustive
    batch = _test_batch(data)
    for view in model.inference_views:
        items, scores = model.beam_search(batch, view)
        exact_items, exact_scores = model.exact_top(batch, view)
        assert torch.equal(items, exact_items), view
        torch.testing.assert_close(scores, exact_scores, atol=1e-5, rtol=0)
    beam = model.full_sort_predict(batch, mode="beam")
    exact = model.full_sort_predict(batch, mode="exact")
    assert torch.equal(torch.isfinite(beam), torch.isfinite(exact))
    torch.testing.assert_close(beam, exact, atol=1e-5, rtol=0)


def test_exact_mode_fuses_each_views_exact_top_k_as_the_beams_are(tiny_dataset):
    from recbole_macrec.model.macrec import published_fusion

    model, _, data = _trained(tiny_dataset, "MACRec")
    model.beam_size = 5
    batch = _test_batch(data)
    fused = model.full_sort_predict(batch, mode="exact")
    text, image = model.exact_top(batch, "text"), model.exact_top(batch, "image")
    torch.testing.assert_close(fused, published_fusion(*text, *image, model.n_items))
    whole = model.exact_item_scores(batch, "text")
    torch.testing.assert_close(text[1], whole.topk(5, dim=1).values)


def test_exact_scoring_far_costlier_than_the_beam_is_refused_before_training(tiny_dataset):
    from recbole_macrec.quick_start import run_recbole

    write_codes(tiny_dataset / "tiny")
    settings = tiny_config_dict(tiny_dataset, **TINY_T5, gr_full_sort="exact", gr_exact_max_cost=0.5)
    with pytest.raises(SettingError, match=r"exact scoring of view 'text' decodes \d+ rows per user.*gr_exact_force"):
        run_recbole("TIGER", "tiny", config_dict=settings)
    result = run_recbole("TIGER", "tiny", config_dict={**settings, "gr_exact_force": True})
    assert 0 <= result["test_result"]["ndcg@10"] <= 1


def test_unknown_full_sort_is_named(tiny_dataset):
    from recbole_macrec.quick_start import run_recbole

    write_codes(tiny_dataset / "tiny")
    with pytest.raises(SettingError, match="gr_full_sort must be one of beam, exact"):
        run_recbole("TIGER", "tiny", config_dict=tiny_config_dict(tiny_dataset, **TINY_T5, gr_full_sort="greedy"))


def test_exact_evaluation_runs_through_recboles_evaluator(tiny_dataset):
    """``gr_full_sort: exact`` end to end; with a beam wider than the catalogue both modes give
    the same test metrics."""
    from recbole_macrec.quick_start import run_recbole

    write_codes(tiny_dataset / "tiny")
    results = {}
    for mode in ("beam", "exact"):
        settings = tiny_config_dict(tiny_dataset, **TINY_T5, gr_full_sort=mode, beam_size=40, epochs=2)
        results[mode] = run_recbole("TIGER", "tiny", config_dict=settings)
    assert results["beam"]["test_result"] == pytest.approx(results["exact"]["test_result"], abs=1e-9)


def test_beam_check_in_the_run_json(tiny_dataset):
    from recbole_macrec.quick_start import run_recbole

    write_codes(tiny_dataset / "tiny")
    settings = tiny_config_dict(tiny_dataset, **TINY_T5, beam_size=10, topk=[1, 5, 10], gr_beam_check=12, epochs=2)
    result = run_recbole("MACRec", "tiny", config_dict=settings)
    check = json.loads(open(result["result_file"]).read())["beam_check"]
    assert check["users"] == 12 and check["k"] == 10 and check["beam_size"] == 10
    assert 0 <= check["recall_mean"] <= 1 and sum(check["recall_counts"].values()) == 12
    assert check["exact_s"] > 0 and check["beam_s"] > 0
    assert all(rows["exact"] > rows["beam"] > 1 for rows in check["decoder_rows"].values())
    wide = run_recbole("MACRec", "tiny", config_dict={**settings, "beam_size": 40})
    check = json.loads(open(wide["result_file"]).read())["beam_check"]
    assert check["recall_mean"] == 1.0 and check["ndcg_beam"] == pytest.approx(check["ndcg_exact"])


def test_beam_check_against_a_hand_computed_recall(tiny_dataset):
    """A beam narrower than k: recall = found / k exactly, counted per user."""
    from recbole_macrec.beam_check import beam_check

    model, _, data = _trained(tiny_dataset, "TIGER")
    model.beam_size = 10
    check = beam_check(model, data[2], users=5, k=10)
    batch = _test_batch(data, 5)
    beam = model.full_sort_predict(batch, mode="beam")
    exact = model.full_sort_predict(batch, mode="exact")
    beam[:, 0] = exact[:, 0] = float("-inf")
    expected = [len(set(beam[b].topk(10).indices.tolist()) & set(exact[b].topk(10).indices.tolist())) / 10
                for b in range(5)]
    assert check["recall_mean"] == pytest.approx(sum(expected) / 5)
