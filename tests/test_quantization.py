import numpy as np
import pytest
import torch

from recbole_macrec.quantization.collisions import (
    add_extra_level, codebook_stats, collision_rate, colliding_groups, resolve_collisions)
from recbole_macrec.quantization.kmeans import kmeans, pseudo_labels
from recbole_macrec.quantization.losses import (
    cross_modal_level_loss, info_nce_to_positive, pick_positives, symmetric_info_nce)
from recbole_macrec.quantization.train import QuantizerParams, batch_loss, train_quantizers


def test_collision_rate_on_hand_made_table():
    codes = np.array([[0, 1], [0, 1], [0, 1], [2, 3], [2, 3], [1, 1]])
    assert collision_rate(codes) == pytest.approx((6 - 3) / 6)
    assert colliding_groups(codes) == [[0, 1, 2], [3, 4]]


def test_resolution_exact_choices():
    codes = np.array([[0, 1], [0, 1], [0, 1], [0, 2]])
    dist = np.array([
        [0.7, 0.5, 0.0, 0.1],   # 0.5 from its codeword: loses to row 1
        [0.9, 0.2, 0.9, 0.9],   # keeps (0, 1)
        [0.3, 0.4, 0.1, 0.6],   # wants 2 (taken by row 3), then 0 -> (0, 0)
        [0.0, 0.0, 0.0, 0.0],
    ])
    out, moved = resolve_collisions(codes, dist)
    assert moved == [0, 2]
    assert out[1].tolist() == [0, 1]
    # losers go nearest-first by distance to their own codeword: row 2 (0.4), then row 0 (0.5)
    assert out[2].tolist() == [0, 0]
    assert out[0].tolist() == [0, 3]            # 2 taken by row 3, then 3 (0.1) is free
    np.testing.assert_array_equal(out[3], codes[3])
    assert collision_rate(out) == 0


def test_resolution_falls_back_to_previous_level_when_prefix_is_full():
    codes = np.array([[0, 0, 0], [0, 0, 0], [0, 0, 1]])
    last = np.array([[0.0, 1.0], [0.5, 0.1], [0.0, 0.0]])
    prev = np.array([[0.0, 1.0], [0.0, 0.2], [0.0, 0.0]])
    out, moved = resolve_collisions(codes, last, prev)
    assert moved == [1] and out[1].tolist() == [0, 1, 1]
    assert collision_rate(out) == 0


def test_extra_level_numbers_colliding_items():
    codes = np.array([[1, 1], [1, 1], [2, 2]])
    assert add_extra_level(codes).tolist() == [[1, 1, 0], [1, 1, 1], [2, 2, 0]]


def test_codebook_stats():
    stats = codebook_stats(np.array([[0, 0], [1, 0], [2, 0], [3, 0]]), 4)
    assert stats[0]["usage"] == 1.0 and stats[0]["perplexity"] == pytest.approx(4.0)
    assert stats[1]["usage"] == 0.25 and stats[1]["perplexity"] == pytest.approx(1.0)


def test_pick_positives_uses_the_other_views_clusters():
    other_view_labels = torch.tensor([5, 7, 5, 9, 7, 5])
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        pos = pick_positives(other_view_labels, g)
        for i, j in enumerate(pos.tolist()):
            if i == 3:  # label 9 is alone in the batch: falls back to itself
                assert j == 3
            else:
                assert j != i and other_view_labels[j] == other_view_labels[i]


def test_cross_modal_loss_cluster_vs_self_positive_differ_and_self_matches_identity():
    torch.manual_seed(0)
    a, b = torch.randn(6, 4), torch.randn(6, 4)
    la, lb = torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([3, 3, 4, 4, 5, 5])
    eye = torch.arange(6)
    self_loss = cross_modal_level_loss(a, b, la, lb, 0.1, positive="self")
    assert self_loss == pytest.approx(float(info_nce_to_positive(a, eye, 0.1) + info_nce_to_positive(b, eye, 0.1)))
    g = torch.Generator().manual_seed(0)
    cluster_loss = cross_modal_level_loss(a, b, la, lb, 0.1, positive="cluster", generator=g)
    # text anchors take positives from IMAGE clusters: a's pairs are (0,1), (2,3), (4,5) per lb
    expected_a = info_nce_to_positive(a, torch.tensor([1, 0, 3, 2, 5, 4]), 0.1)
    expected_b = info_nce_to_positive(b, torch.tensor([1, 0, 3, 2, 5, 4]), 0.1)
    assert cluster_loss == pytest.approx(float(expected_a + expected_b))
    assert float(cluster_loss) != pytest.approx(float(self_loss))


def test_symmetric_info_nce_is_symmetric_and_small_when_aligned():
    torch.manual_seed(0)
    a, b = torch.randn(8, 16), torch.randn(8, 16)
    assert symmetric_info_nce(a, b, 0.1) == pytest.approx(float(symmetric_info_nce(b, a, 0.1)))
    assert symmetric_info_nce(a * 5, a, 0.01) < 1e-3


def _tiny_views(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return {"text": rng.normal(size=(n, 12)).astype(np.float32),
            "image": rng.normal(size=(n, 10)).astype(np.float32)}


def _tiny_params(**kw):
    base = dict(num_levels=3, codebook_size=4, e_dim=8, encoder_layers=(16,), epochs=3,
                batch_size=16, pseudo_label_k=4, con_weights=(0.0, 0.5, 0.5))
    base.update(kw)
    return QuantizerParams(**base)


def test_zero_level_weight_switches_that_term_off():
    from recbole_macrec.quantization.train import _build

    views = _tiny_views()
    params = _tiny_params(con_weights=(0.0, 0.0, 0.3), align_weight=0.0)
    torch.manual_seed(0)
    models = _build(views, params, "macrec", "cpu")
    x = {k: torch.tensor(v) for k, v in views.items()}
    labels = {k: torch.tensor(pseudo_labels(v, 4, 0)) for k, v in views.items()}
    idx = torch.arange(16)
    outputs = {k: models[k](x[k][idx]) for k in models}
    total, parts = batch_loss(models, outputs, labels, idx, params, "macrec", torch.Generator().manual_seed(0))
    assert "con0" not in parts and "con1" not in parts and "con2" in parts and "align" not in parts
    plain, plain_parts = batch_loss(models, outputs, labels, idx, params, "rqvae", None)
    assert float(total - plain) == pytest.approx(float(parts["con2"]))
    off = _tiny_params(con_weights=(0.0, 0.0, 0.0), align_weight=0.0)
    total_off, _ = batch_loss(models, outputs, labels, idx, off, "macrec", None)
    assert float(total_off) == pytest.approx(float(plain))


def test_same_seed_same_codes_and_different_seed_differs():
    views = _tiny_views()
    a = train_quantizers(views, "macrec", _tiny_params(), seed=3, show_progress=False)
    b = train_quantizers(views, "macrec", _tiny_params(), seed=3, show_progress=False)
    for v in views:
        np.testing.assert_array_equal(a[v].codes, b[v].codes)
    c = train_quantizers(views, "macrec", _tiny_params(), seed=4, show_progress=False)
    assert any(not np.array_equal(a[v].codes, c[v].codes) for v in views)


def test_sinkhorn_last_level_is_more_balanced():
    views = {"text": _tiny_views(n=64)["text"]}
    plain = train_quantizers(views, "rqvae", _tiny_params(epochs=2), seed=0, show_progress=False)
    balanced = train_quantizers(views, "rqvae_sinkhorn", _tiny_params(epochs=2), seed=0, show_progress=False)
    counts = lambda r: np.bincount(r["text"].codes[:, -1], minlength=4)
    assert counts(balanced).max() - counts(balanced).min() <= counts(plain).max() - counts(plain).min()


def test_kmeans_is_seeded_and_stable():
    x = np.random.default_rng(0).normal(size=(200, 8)).astype(np.float32)
    _, l1 = kmeans(x, 10, seed=1)
    _, l2 = kmeans(x, 10, seed=1)
    np.testing.assert_array_equal(l1, l2)
    # well separated blobs are recovered exactly
    blobs = np.concatenate([np.random.default_rng(1).normal(c, 0.01, size=(20, 2)) for c in (0, 5, 10)])
    _, labels = kmeans(blobs.astype(np.float32), 3, seed=0)
    assert all(len(set(labels[i * 20:(i + 1) * 20])) == 1 for i in range(3))
    assert len(set(labels)) == 3
    with pytest.raises(ValueError, match="k=300"):
        kmeans(x, 300)


def test_codebook_larger_than_catalogue_is_an_error():
    with pytest.raises(ValueError, match="sid_codebook_size=64 exceeds the 40 items"):
        train_quantizers(_tiny_views(), "rqvae", _tiny_params(codebook_size=64), seed=0, show_progress=False)


def test_restart_moves_only_unused_codewords_and_clears_their_moments():
    from recbole_macrec.quantization.rqvae import ResidualQuantizer

    rq = ResidualQuantizer(num_levels=2, codebook_size=4, e_dim=3)
    optimizer = torch.optim.AdamW(rq.parameters(), lr=0.1)
    rq.codebooks[0].sum().backward()
    rq.codebooks[1].sum().backward()
    optimizer.step()
    before = [b.detach().clone() for b in rq.codebooks]
    codes = torch.tensor([[0, 0], [1, 1], [1, 2], [0, 3]])       # level 0 uses {0, 1}; level 1 all four
    residuals = torch.arange(2 * 4 * 3, dtype=torch.float).view(2, 4, 3) + 100
    moved = rq.restart_dead_codes(residuals, codes, torch.Generator().manual_seed(0), optimizer)
    assert moved == [2, 0]
    book = rq.codebooks[0].detach()
    assert torch.equal(book[:2], before[0][:2]) and torch.equal(rq.codebooks[1].detach(), before[1])
    for row in book[2:]:   # each dead codeword now sits on some item's level-0 residual
        assert any(torch.equal(row, r) for r in residuals[0])
    state = optimizer.state[rq.codebooks[0]]
    assert (state["exp_avg"][2:] == 0).all() and (state["exp_avg_sq"][2:] == 0).all()
    assert (state["exp_avg"][:2] != 0).all()


def test_dead_code_restart_prevents_a_collapsed_first_level():
    """Small-scale inputs (as TF-IDF views are) collapse the released RQ-VAE onto a few level-0
    codes; restarting unused codewords keeps every code in use and lowers the collisions."""
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(40, 16))
    x = (centers[rng.integers(0, 40, 400)] + 0.3 * rng.normal(size=(400, 16))).astype(np.float32) * 0.02
    result = {}
    for restart in (False, True):
        params = QuantizerParams(num_levels=3, codebook_size=16, e_dim=8, encoder_layers=(32,), epochs=40,
                                 batch_size=128, con_weights=(0, 0, 0), dead_code_restart=restart)
        best = train_quantizers({"v": x}, "rqvae", params, 1, "cpu", show_progress=False)["v"]
        result[restart] = (best.rate, len(np.unique(best.codes[:, 0])))
    assert result[True][1] == 16 and result[False][1] < 16
    assert result[True][0] < result[False][0] - 0.2
