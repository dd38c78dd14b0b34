import numpy as np
import pytest
import torch

from conftest import (
    assert_training_lowers_loss,
    build_model,
    tiny_config_dict,
    training_batch,
    without_cache_deprecation,
    write_codes,
)
from recbole_macrec.model.beam_search import CodeTrie, scores_to_matrix
from recbole_macrec.model.vocab import EOS, PAD, SemanticIdVocab


@pytest.fixture
def tiger(tiny_dataset):
    write_codes(tiny_dataset / "tiny")
    model, config, data = build_model("TIGER", tiny_dataset, beam_size=20)
    model.eval()
    return model, config, data


def _batch(data, n=None):
    batch = next(iter(data[2]))[0]
    return batch if n is None else batch[torch.arange(n)]


def test_vocab_layout_and_round_trip():
    codes = torch.tensor([[0, 0], [2, 1], [0, 3], [1, 0]])
    other = torch.tensor([[0, 0], [1, 1], [0, 0], [1, 2]])
    vocab = SemanticIdVocab({"text": codes, "image": other}, tasks=["seqrec", "seqimage"])
    assert vocab.task_ids == {"seqrec": 2, "seqimage": 3}
    assert vocab.level_sizes["text"] == [3, 4] and vocab.level_offsets["text"] == [4, 7]
    assert vocab.level_offsets["image"] == [11, 13] and vocab.size == 16
    tok = vocab.item_tokens("text", torch.tensor([1, 3]))
    assert tok.tolist() == [[6, 8], [5, 7]]
    assert vocab.codes_of("text", tok).tolist() == [[2, 1], [1, 0]]
    assert vocab.item_tokens("text", torch.tensor([0])).tolist() == [[PAD, PAD]]
    # text and image codes never share a token
    text_tokens = set(vocab.item_token_table("text")[1:].flatten().tolist())
    image_tokens = set(vocab.item_token_table("image")[1:].flatten().tolist())
    assert not text_tokens & image_tokens


def test_history_source_on_hand_built_batch(tiger):
    model, _, _ = tiger
    seq = torch.tensor([[3, 5, 0, 0], [7, 0, 0, 0]])
    length = torch.tensor([2, 1])
    src, mask = model.history_source("text", seq, length, "seqrec")
    t = model.item_tokens("text", torch.tensor([3, 5, 7]))
    prompt = model.vocab.task_ids["seqrec"]
    assert src.shape == (2, 2 + 2 * 3)                  # cut to the batch's longest history
    assert src[0].tolist() == [prompt, *t[0].tolist(), *t[1].tolist(), EOS]
    assert src[1].tolist() == [prompt, *t[2].tolist(), EOS, PAD, PAD, PAD]
    assert mask[1].tolist() == [True] * 5 + [False] * 3
    target = model.target_tokens("text", torch.tensor([5]))
    assert target.tolist() == [[*t[1].tolist(), EOS]]


def test_trie_tables_match_codes():
    codes = np.array([[0, 1], [0, 2], [1, 0]])
    trie = CodeTrie.from_codes(codes, np.array([10, 11, 12]), offsets=[5, 7], sizes=[2, 3])
    assert all(level.dense for level in trie.levels)
    assert trie.levels[0].child.tolist() == [[0, 1]]
    assert trie.levels[1].child.tolist() == [[-1, 10, 11], [12, -1, -1]]
    # the sparse form: each prefix's children sorted by code, padded to the level's largest branching
    sparse = CodeTrie.from_codes(codes, np.array([10, 11, 12]), offsets=[5, 7], sizes=[2, 3], dense_limit=0)
    assert not any(level.dense for level in sparse.levels)
    assert sparse.levels[1].codes.tolist() == [[1, 2], [0, -1]]
    assert sparse.levels[1].child.tolist() == [[10, 11], [12, -1]]
    assert sparse.nbytes() < trie.nbytes() * 2
    with pytest.raises(ValueError, match="unique"):
        CodeTrie.from_codes(np.array([[0, 1], [0, 1]]), np.array([1, 2]), [0, 2], [2, 2])


def test_sparse_and_dense_tries_decode_identically(tiger):
    from recbole_macrec.model.beam_search import CodeTrie as Trie

    model, _, data = tiger
    batch = _batch(data, 6)
    dense_items, dense_scores = model.beam_search(batch, "text")
    model.tries["text"] = Trie.for_view(model.vocab, "text", "cpu", dense_limit=0)
    assert not any(level.dense for level in model.trie("text").levels)
    items, scores = model.beam_search(batch, "text")
    assert torch.equal(items, dense_items)
    torch.testing.assert_close(scores, dense_scores)
    model.beam_size = model.n_items      # exhaustive: equals brute-force scoring of every item
    items, scores = model.beam_search(batch, "text")
    exact = _brute_force(model, batch)
    assert torch.equal(items[:, :30], exact.argsort(dim=1, descending=True) + 1)


def _brute_force(model, batch, view="text"):
    n = model.n_items
    rows = []
    for r in range(len(batch)):
        one = batch[torch.tensor([r] * (n - 1))]
        rows.append(model.teacher_forced_scores(one, view, torch.arange(1, n)))
    return torch.stack(rows)  # [B, n_items - 1], column j = item j + 1


def test_beam_search_equals_brute_force_when_beam_covers_catalogue(tiger):
    model, _, data = tiger
    batch = _batch(data, 6)
    model.beam_size = model.n_items  # 31 >= 30 items: the search is exhaustive
    items, scores = without_cache_deprecation(model.beam_search, batch, "text")
    exact = _brute_force(model, batch)
    order = exact.argsort(dim=1, descending=True) + 1
    assert torch.equal(items[:, :30], order)
    torch.testing.assert_close(scores[:, :30], exact.sort(dim=1, descending=True).values, atol=1e-5, rtol=0)
    assert (items[:, 30:] == -1).all() and torch.isinf(scores[:, 30:]).all()


def test_small_beam_returns_valid_items_with_teacher_forced_scores(tiger):
    model, _, data = tiger
    batch = _batch(data, 6)
    model.beam_size = 5
    items, scores = model.beam_search(batch, "text")
    assert (items >= 1).all() and (items < model.n_items).all()
    assert all(len(set(row.tolist())) == 5 for row in items)
    exact = _brute_force(model, batch)
    torch.testing.assert_close(scores, exact.gather(1, items - 1), atol=1e-5, rtol=0)
    assert (scores[:, :-1] >= scores[:, 1:]).all()


def test_mixed_history_lengths_batch_equals_one_by_one(tiger):
    model, _, data = tiger
    batch = _batch(data)
    lengths = batch["item_length"]
    assert len(set(lengths.tolist())) > 1
    items, scores = model.beam_search(batch, "text")
    for r in range(len(batch)):
        one_items, one_scores = model.beam_search(batch[torch.tensor([r])], "text")
        assert torch.equal(one_items[0], items[r])
        torch.testing.assert_close(one_scores[0], scores[r], atol=1e-5, rtol=0)


def test_score_matrix_is_minus_inf_outside_the_beam(tiger):
    model, _, data = tiger
    batch = _batch(data, 4)
    matrix = model.full_sort_predict(batch)
    items, scores = model.beam_search(batch, "text")
    assert matrix.shape == (4, model.n_items)
    assert (torch.isfinite(matrix).sum(dim=1) == 20).all()
    for r in range(4):
        torch.testing.assert_close(matrix[r, items[r]], scores[r])
    assert torch.isinf(matrix[:, 0]).all()
    assert scores_to_matrix(torch.tensor([[2, -1]]), torch.tensor([[0.5, float("-inf")]]), 4).tolist() == \
        [[float("-inf"), float("-inf"), 0.5, float("-inf")]]


def test_beam_smaller_than_topk_is_a_config_error(tiny_dataset):
    write_codes(tiny_dataset / "tiny")
    with pytest.raises(ValueError, match="beam_size=5 is smaller than the largest top-k \\(20\\)"):
        build_model("TIGER", tiny_dataset, beam_size=5)


def test_a_few_steps_lower_the_loss(tiger):
    model, config, data = tiger
    assert_training_lowers_loss(model, training_batch(model, config, data))


def test_tiger_runs_end_to_end(tiny_dataset):
    from conftest import TINY_T5
    from recbole_macrec.quick_start import run_recbole

    cfg = tiny_config_dict(tiny_dataset, **{**TINY_T5, "sid_method": "rqvae", "sid_views": ["text"],
                                            "text_view_fields": ["title", "class"], "view_dim": 8,
                                            "sid_num_levels": 3, "sid_codebook_size": 4, "sid_e_dim": 8,
                                            "sid_encoder_layers": [16], "sid_epochs": 2, "sid_batch_size": 16,
                                            "sid_con_weights": [0, 0, 0], "sid_kmeans_iters": 10, "epochs": 2,
                                            "run_label": "TIGER, tiny run"})
    result = run_recbole("TIGER", "tiny", config_dict=cfg)
    assert result["label"] == "TIGER, tiny run"
    assert set(result["test_result"]) >= {"hit@10", "ndcg@10"}
    assert 0 <= result["test_result"]["hit@20"] <= 1


@pytest.mark.parametrize("model_name", ["MACRec", "TIGER", "LCRec"])
def test_bf16_autocast_trains_and_decodes_like_fp32(tiny_dataset, model_name):
    """GPU runs train and decode under bf16 autocast (gr_bf16); the CPU's autocast catches dtype
    mismatches in the packed losses and the beam search before a GPU does."""
    write_codes(tiny_dataset / "tiny")
    model, config, data = build_model(model_name, tiny_dataset)
    batch = training_batch(model, config, data)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.calculate_loss(batch)
    loss.backward()
    assert loss.dtype == torch.float32
    assert float(loss) == pytest.approx(float(model.calculate_loss(batch)), rel=1e-2)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    users = _batch(data)
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model.full_sort_predict(users)
        full = model.full_sort_predict(users)
    assert low.dtype == full.dtype == torch.float32 and low.shape == full.shape
    # the top item agrees for most users (bf16 may reorder near-ties)
    assert (low.argmax(1) == full.argmax(1)).float().mean() >= 0.75


def test_beam_scores_equal_transformers_generate_with_the_released_settings(tiger):
    """transformers' beam search (beam 20, 20 sequences, length_penalty 1, eos only after a full
    item): identical item lists and sequences_scores = (sum of code log-probs + log p(eos)) / (L+1)."""
    from beam_search_vs_hf import hf_generate

    model, _, data = tiger
    batch = _batch(data, 5)
    src, mask = model.history_source("text", batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN], "seqrec")
    tokens = model.vocab.item_token_table("text")
    prefix_tree, item_of = {}, {}
    for item in range(1, model.n_items):
        node = prefix_tree
        for t in tokens[item].tolist():
            node = node.setdefault(t, {})
        item_of[tuple(tokens[item].tolist())] = item
    hf_items, hf_scores = hf_generate(model.t5, prefix_tree, item_of, src, mask, 20, tokens.shape[1])
    items, scores = model.beam_search(batch, "text")
    assert torch.equal(items, hf_items)
    torch.testing.assert_close(scores, hf_scores, atol=1e-5, rtol=0)


@pytest.mark.parametrize("bf16_eval", [False, True])
def test_decoding_runs_in_fp32_unless_bf16_eval_is_asked(tiny_dataset, bf16_eval):
    from recbole_macrec.trainer.generative_trainer import GenerativeTrainer

    write_codes(tiny_dataset / "tiny")
    model, config, data = build_model("TIGER", tiny_dataset, gr_bf16_eval=bf16_eval)
    trainer = GenerativeTrainer(config, model)
    trainer.bf16 = True     # as on CUDA; on this CPU the autocast is the CPU's
    seen = {"train": [], "eval": []}
    loss, predict = model.calculate_loss, model.full_sort_predict
    model.calculate_loss = lambda b: seen["train"].append(torch.is_autocast_enabled("cpu")) or loss(b)
    model.full_sort_predict = lambda b: seen["eval"].append(torch.is_autocast_enabled("cpu")) or predict(b)
    trainer.fit(data[0], data[1], saved=False)
    assert seen["train"] and all(seen["train"])
    assert seen["eval"] and all(flag == bf16_eval for flag in seen["eval"])
