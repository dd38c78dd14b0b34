import numpy as np
import pytest
import torch

from recbole_macrec.quantization.collisions import (
    add_extra_level,
    codebook_stats,
    colliding_groups,
    collision_rate,
    resolve_collisions,
    sinkhorn_reassign,
)
from recbole_macrec.quantization.kmeans import kmeans, pseudo_labels
from recbole_macrec.quantization.losses import (
    cross_modal_level_loss,
    info_nce_to_positive,
    pick_positives,
    self_positive_level_loss,
    symmetric_info_nce,
)
from recbole_macrec.quantization.rqvae import sinkhorn
from recbole_macrec.quantization.train import QuantizerParams, batch_loss, build_models, train_quantizers


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


def test_cross_modal_loss_takes_positives_from_the_other_views_clusters_and_self_is_the_identity():
    torch.manual_seed(0)
    a, b = torch.randn(6, 4), torch.randn(6, 4)
    la, lb = torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([3, 3, 4, 4, 5, 5])
    eye = torch.arange(6)
    self_loss = self_positive_level_loss(a, b, 0.1)
    assert self_loss == pytest.approx(float(info_nce_to_positive(a, eye, 0.1) + info_nce_to_positive(b, eye, 0.1)))
    g = torch.Generator().manual_seed(0)
    cluster_loss = cross_modal_level_loss(a, b, la, lb, 0.1, generator=g)
    # text anchors take positives from IMAGE clusters: a's pairs are (0,1), (2,3), (4,5) per lb
    expected_a = info_nce_to_positive(a, torch.tensor([1, 0, 3, 2, 5, 4]), 0.1)
    expected_b = info_nce_to_positive(b, torch.tensor([1, 0, 3, 2, 5, 4]), 0.1)
    assert cluster_loss == pytest.approx(float(expected_a + expected_b))
    assert float(cluster_loss) != pytest.approx(float(self_loss))


def test_a_zero_residual_gives_a_bounded_contrastive_gradient():
    """An item alone in its codeword's cluster has residual 0 at the next level: its gradient
    through the normalisation must stay bounded (it was ~1e12 with a plain L2 normalisation)."""
    torch.manual_seed(0)
    res = torch.randn(8, 4)
    res[3] = 0.0
    res.requires_grad_(True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    cross_modal_level_loss(res, res, labels, labels, 0.1, torch.Generator().manual_seed(0)).backward()
    assert torch.isfinite(res.grad).all() and res.grad.abs().max() < 1e3


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
    base = dict(num_levels=3, codebook_size=4, e_dim=8, encoder_layers=(16,), projection_dim=12, epochs=3,
                batch_size=16, pseudo_label_k=4, con_weights=(0.0, 0.5, 0.5), kmeans_iters=20)
    base.update(kw)
    return QuantizerParams(**base)


def _tiny_pair(params, n=16, seed=0):
    """Two RQ-VAEs (macrec) on random views, k-means-initialised, with pseudo-labels and a batch."""
    views = _tiny_views(n=n, seed=seed)
    torch.manual_seed(seed)
    models = build_models(views, params, "macrec", "cpu")
    x = {k: torch.tensor(v) for k, v in views.items()}
    for k, m in models.items():
        m.quantizer.kmeans_init(m.encoder(x[k]).detach(), seed, 10)
    labels = {k: torch.tensor(pseudo_labels(v, params.pseudo_label_k, seed)) for k, v in views.items()}
    return models, x, labels


def _batch_grads(params, n=32):
    """Gradients of the pre-stage's own batch loss: encoder tensors and codebooks of the text view."""
    models, x, labels = _tiny_pair(params, n=n)
    outputs = {k: models[k](x[k]) for k in models}
    loss, parts = batch_loss(outputs, labels, torch.arange(n), params, "macrec", torch.Generator().manual_seed(0))
    loss.backward()
    text = models["text"]
    return ([p.grad.clone() for p in text.encoder.parameters()],
            [b.grad.clone() for b in text.quantizer.codebooks], parts)


def _grad_difference(a, b):
    return float(sum((x - y).abs().sum() for x, y in zip(a, b)))


@pytest.mark.parametrize("con_variant", ["paper", "same_item"])
def test_every_weighted_level_of_the_contrastive_loss_moves_the_encoder_and_earlier_codebooks(con_variant):
    """The paper's residual r_l = z - sum_{j<l} e_j carries gradient: a weight on level l changes the
    encoder's gradient, and the codebooks of levels < l (never those >= l). On straight-through
    residuals levels >= 1 had exactly zero gradient."""
    small = dict(num_levels=4, codebook_size=4, e_dim=8, encoder_layers=(16,), projection_dim=12,
                 pseudo_label_k=4, align_weight=0.0, con_variant=con_variant)
    enc0, books0, _ = _batch_grads(_tiny_params(**small, con_weights=(0, 0, 0, 0)))
    enc, _, parts = _batch_grads(_tiny_params(**small, con_weights=(0, 0, 0.1, 0.1)))
    assert {"con2", "con3"} <= set(parts)
    assert _grad_difference(enc, enc0) > 1e-3
    for level in range(4):
        weights = [0.0] * 4
        weights[level] = 0.1
        enc, books, _ = _batch_grads(_tiny_params(**small, con_weights=tuple(weights)))
        assert _grad_difference(enc, enc0) > 1e-3, level
        for below in range(4):
            moved = _grad_difference([books[below]], [books0[below]])
            assert (moved > 1e-6) == (below < level), (level, below, moved)


def test_same_item_variant_is_the_cross_view_info_nce_of_each_weighted_levels_residuals_by_hand():
    """Level l: weight x (CE(a_l b_l^T / t, i) + CE(b_l a_l^T / t, i)) on unit rows, the positive of
    item i being its own residual in the other view (no pseudo-labels read)."""
    params = _tiny_params(con_variant="same_item", con_weights=(0.0, 0.5, 0.25), align_weight=0.0,
                          temperature=0.2)
    models, x, _ = _tiny_pair(params)
    outputs = {k: models[k](x[k]) for k in models}
    _, parts = batch_loss(outputs, {}, torch.arange(16), params, "macrec", None)
    assert set(k for k in parts if k.startswith("con")) == {"con1", "con2"}
    for level, weight in ((1, 0.5), (2, 0.25)):
        a = outputs["text"]["residuals_grad"][level].detach().numpy().astype(np.float64)
        b = outputs["image"]["residuals_grad"][level].detach().numpy().astype(np.float64)
        for rows in (a, b):   # unit rows, a near-zero residual divided by 0.05 x the mean norm
            norm = np.linalg.norm(rows, axis=1, keepdims=True)
            rows /= np.maximum(norm, 0.05 * norm.mean())
        logits = a @ b.T / 0.2

        def ce(m):
            return float(np.mean(np.log(np.exp(m).sum(axis=1)) - np.diag(m)))
        assert float(parts[f"con{level}"]) == pytest.approx(weight * (ce(logits) + ce(logits.T)), rel=1e-4)


def test_paper_alignment_trains_the_codebooks():
    small = dict(num_levels=3, codebook_size=4, e_dim=8, encoder_layers=(16,), projection_dim=0,
                 pseudo_label_k=4, con_weights=(0, 0, 0))
    _, books0, _ = _batch_grads(_tiny_params(**small, align_weight=0.0))
    _, books, _ = _batch_grads(_tiny_params(**small, align_weight=0.5))
    assert all(_grad_difference([b], [b0]) > 1e-6 for b, b0 in zip(books, books0))


def _align_grads(con_variant, align_target):
    """(encoder, codebooks) gradients of L_align alone: the batch loss with and without it."""
    small = dict(num_levels=3, codebook_size=4, e_dim=8, encoder_layers=(16,), projection_dim=0,
                 pseudo_label_k=4, con_weights=(0, 0, 0), con_variant=con_variant, align_target=align_target)
    enc0, books0, _ = _batch_grads(_tiny_params(**small, align_weight=0.0))
    enc, books, _ = _batch_grads(_tiny_params(**small, align_weight=0.5))
    return _grad_difference(enc, enc0), _grad_difference(books, books0)


@pytest.mark.parametrize("con_variant", ["paper", "none", "released"])
def test_alignment_path_follows_its_own_setting_whatever_the_contrastive_variant(con_variant):
    """w/o L_con removes L_con alone: its L_align trains the codebooks and not the encoder, as the
    full model's does ('codeword_sum'); 'quantized' (the released code) trains the encoder only."""
    encoder, codebooks = _align_grads(con_variant, "codeword_sum")
    assert codebooks > 1e-6 and encoder == 0
    encoder, codebooks = _align_grads(con_variant, "quantized")
    assert encoder > 1e-6 and codebooks == 0


def test_variant_yamls_name_their_alignment_path():
    import yaml

    from conftest import ROOT

    def setting(name, key):
        return yaml.safe_load((ROOT / "properties" / "ablation" / f"{name}.yaml").read_text())[key]

    defaults = yaml.safe_load((ROOT / "properties" / "semantic_ids.yaml").read_text())
    assert defaults["sid_con_variant"] == "paper" and defaults["sid_align_target"] == "codeword_sum"
    assert setting("wo_con", "sid_con_variant") == "none" and setting("wo_con", "sid_align_target") == "codeword_sum"
    assert setting("released_con", "sid_con_variant") == "released"
    assert setting("released_con", "sid_align_target") == "quantized"


def _released_con_by_hand(z_a, z_b, books_a, books_b, temperature):
    """The released objective in numpy: per level, nearest codeword, InfoNCE with self positives
    on the L2-normalised residual (denominator over the whole batch), both views, mean over levels."""
    def view_terms(z, books):
        residual, terms = z.astype(np.float64), []
        for book in books:
            f = residual / np.linalg.norm(residual, axis=1, keepdims=True)
            s = f @ f.T / temperature
            terms.append(np.mean([-s[i, i] + np.log(np.exp(s[i]).sum()) for i in range(len(s))]))
            nearest = ((residual[:, None, :] - book[None]) ** 2).sum(-1).argmin(1)
            residual = residual - book[nearest]
        return terms

    a, b = view_terms(z_a, books_a), view_terms(z_b, books_b)
    return sum(x + y for x, y in zip(a, b)) / len(books_a)


def test_released_variant_equals_the_released_objective_by_hand_and_trains_only_level_zero():
    # two codewords per level for 16 items: no item is alone in a cluster, so no residual is 0
    small = dict(num_levels=3, codebook_size=2, e_dim=8, encoder_layers=(16,), projection_dim=12,
                 pseudo_label_k=4, align_weight=0.0)
    params = _tiny_params(**small, con_variant="released")
    models, x, labels = _tiny_pair(params)
    outputs = {k: models[k](x[k]) for k in models}
    _, parts = batch_loss(outputs, {}, torch.arange(16), params, "macrec", None)
    books = {k: [b.detach().numpy() for b in m.quantizer.codebooks] for k, m in models.items()}
    expected = _released_con_by_hand(outputs["text"]["z"].detach().numpy(), outputs["image"]["z"].detach().numpy(),
                                     books["text"], books["image"], 0.1)
    assert float(parts["con"]) == pytest.approx(expected, rel=1e-5)
    # its gradient is that of the level-0 term alone, divided by the number of levels
    parts["con"].backward()
    released = [p.grad.clone() for p in models["text"].encoder.parameters()]
    models, x, _ = _tiny_pair(params)
    outputs = {k: models[k](x[k]) for k in models}
    (self_positive_level_loss(outputs["text"]["z"], outputs["image"]["z"], 0.1) / 3).backward()
    for got, want in zip(released, (p.grad for p in models["text"].encoder.parameters())):
        torch.testing.assert_close(got, want)


def test_zero_level_weight_switches_that_term_off():
    params = _tiny_params(con_weights=(0.0, 0.0, 0.3), align_weight=0.0, projection_dim=0)
    models, x, labels = _tiny_pair(params)
    idx = torch.arange(16)
    outputs = {k: models[k](x[k][idx]) for k in models}
    total, parts = batch_loss(outputs, labels, idx, params, "macrec", torch.Generator().manual_seed(0))
    assert "con0" not in parts and "con1" not in parts and "con2" in parts and "align" not in parts
    plain, _ = batch_loss(outputs, labels, idx, params, "rqvae", None)
    assert float(total - plain) == pytest.approx(float(parts["con2"]))
    for off in (_tiny_params(con_weights=(0.0, 0.0, 0.0), align_weight=0.0),
                _tiny_params(con_variant="none", align_weight=0.0)):
        total_off, _ = batch_loss(outputs, labels, idx, off, "macrec", None)
        assert float(total_off) == pytest.approx(float(plain))


@pytest.mark.parametrize("setting,match", [
    (dict(con_variant="clustered"), "sid_con_variant must be one of paper, same_item, released, none"),
    (dict(con_weights=(0, 0.1)), "sid_con_weights has 2 entries for sid_num_levels=3"),
    (dict(con_weights=(0, 0, 0.1, 0.1)), "a weight on level 3 .0-based., which does not exist"),
    (dict(con_weights=(0, -1, 0)), "non-negative"),
    (dict(collision="random"), "sid_collision must be one of"),
    (dict(epochs=0), "sid_epochs must be a positive integer"),
    (dict(lr_schedule="cosine"), "sid_lr_schedule must be one of"),
])
def test_bad_prestage_settings_are_named(setting, match):
    with pytest.raises(ValueError, match=match):
        _tiny_params(**setting).validate()


def test_pseudo_label_k_larger_than_the_items_is_an_error():
    with pytest.raises(ValueError, match="sid_pseudo_label_k=64 must be between 1 and the number of items .40."):
        train_quantizers(_tiny_views(), "macrec", _tiny_params(pseudo_label_k=64), seed=0, show_progress=False)


def test_removed_con_positive_setting_is_refused(tiny_dataset):
    from conftest import tiny_config_dict
    from recbole_macrec.config import Config

    config = Config(model="SASRec", dataset="tiny", config_dict=tiny_config_dict(tiny_dataset, sid_con_positive="self"))
    with pytest.raises(ValueError, match="sid_con_positive was removed"):
        QuantizerParams.from_config(config)


def test_same_seed_same_codes_and_different_seed_differs():
    views = _tiny_views()
    a = train_quantizers(views, "macrec", _tiny_params(), seed=3, show_progress=False)
    b = train_quantizers(views, "macrec", _tiny_params(), seed=3, show_progress=False)
    for v in views:
        np.testing.assert_array_equal(a[v].codes, b[v].codes)
    c = train_quantizers(views, "macrec", _tiny_params(), seed=4, show_progress=False)
    assert any(not np.array_equal(a[v].codes, c[v].codes) for v in views)


def _released_sinkhorn(d, epsilon, iters):
    """The released RQ-VAEs' sinkhorn_algorithm (after center_distance_for_constraint), element by
    element in numpy."""
    d = d.astype(np.float64)
    middle = (d.max() + d.min()) / 2
    d = (d - middle) / (d.max() - middle + 1e-5)
    q = np.exp(-d / epsilon)
    q /= q.sum()
    n, m = q.shape
    for _ in range(iters):
        for i in range(n):
            q[i] = q[i] / q[i].sum() / n
        for j in range(m):
            q[:, j] = q[:, j] / q[:, j].sum() / m
    return q * n


def test_sinkhorn_equals_the_released_algorithm():
    d = np.random.default_rng(0).uniform(0, 3, size=(12, 5))
    np.testing.assert_allclose(sinkhorn(torch.tensor(d), 0.05, 7).numpy(), _released_sinkhorn(d, 0.05, 7), rtol=1e-10)
    # squared distances where a few codewords are nearest to everyone: the assignment spreads out
    d = np.random.default_rng(1).uniform(0, 1, size=(40, 4)) + np.array([0, 0.1, 2, 3])
    codes = sinkhorn(torch.tensor(d), 0.003, 50).argmax(1)
    assert np.bincount(d.argmin(1), minlength=4)[2:].sum() == 0       # nearest: codes 2, 3 unused
    assert np.bincount(codes, minlength=4).max() <= 20 and np.bincount(codes, minlength=4).min() >= 5


def test_sinkhorn_method_balances_the_last_level_while_training_and_extracts_by_nearest_codeword():
    views = {"text": _tiny_views(n=64)["text"]}
    params = _tiny_params(epochs=2, projection_dim=0)
    model = build_models(views, params, "rqvae_sinkhorn", "cpu")["text"]
    z = model.encoder(torch.tensor(views["text"])).detach()
    model.quantizer.kmeans_init(z, 0, 10)
    training, extraction = model.quantizer(z)["codes"], model.quantizer(z, balanced=False)["codes"]
    spread = lambda c: np.bincount(c[:, -1].numpy(), minlength=4).max()
    assert spread(training) < spread(extraction)
    assert torch.equal(training[:, :-1], extraction[:, :-1])
    best = train_quantizers(views, "rqvae_sinkhorn", params, seed=0, show_progress=False)["text"]
    nearest = best.last_distances.argmin(1)
    np.testing.assert_array_equal(best.codes[:, -1], nearest)


def test_lcrec_collision_handling_reassigns_each_colliding_group_by_sinkhorn():
    codes = np.array([[0, 1], [0, 1], [0, 1], [1, 2], [1, 0]])
    last = np.array([[0.0, 0.1, 0.9, 0.8],    # the group (rows 0-2) all nearest to code 0 ...
                     [0.0, 0.2, 0.1, 0.9],
                     [0.1, 0.0, 0.9, 0.2],
                     [0.5, 0.5, 0.0, 0.5],
                     [0.0, 0.5, 0.5, 0.5]])
    out, moved = sinkhorn_reassign(codes, last, 0.003, 50)
    # ... are spread over three codewords; prefixes and the other items stay
    assert collision_rate(out) == 0 and len({tuple(r) for r in out[:3]}) == 3
    assert (out[:, 0] == codes[:, 0]).all() and out[3:].tolist() == codes[3:].tolist()
    assert moved == [int(r) for r in np.flatnonzero((out != codes).any(1))]
    # items with identical distances cannot be told apart: they stay colliding for the fallback
    same, _ = sinkhorn_reassign(np.array([[0, 1], [0, 1]]), np.array([[0.0, 1.0], [0.0, 1.0]]), 0.003, 50)
    assert collision_rate(same) == 0.5


def test_eval_step_keeps_the_best_evaluated_epoch_and_the_last():
    views = {"text": _tiny_views()["text"]}
    best = train_quantizers(views, "rqvae", _tiny_params(epochs=5, eval_step=2, projection_dim=0), seed=0,
                            show_progress=False)["text"]
    assert [h["epoch"] for h in best.history] == [1, 3, 4]
    assert best.epoch in (1, 3, 4)


def test_projection_only_for_macrec_and_without_activation():
    views = _tiny_views()
    params = _tiny_params(projection_dim=24)
    macrec = build_models(views, params, "macrec", "cpu")["text"]
    plain = build_models(views, params, "rqvae", "cpu")["text"]
    first = macrec.encoder[0]
    assert isinstance(first[0], torch.nn.Linear) and len(first) == 1 and first[0].out_features == 24
    assert isinstance(macrec.encoder[1][0], torch.nn.Linear) and macrec.encoder[1][0].in_features == 24
    assert macrec.decoder[-1][0].in_features == 24 and macrec.decoder[-1][0].out_features == 12
    assert len(plain.encoder) == 1 and plain.encoder[0][0].in_features == 12
    linear = macrec.encoder[1][0]
    assert torch.equal(linear.bias, torch.zeros_like(linear.bias))


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
    """Small-scale inputs (as TF-IDF views are) with a large step collapse the RQ-VAE onto a few
    level-0 codes; restarting unused codewords keeps every code in use and lowers the collisions."""
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(40, 16))
    x = (centers[rng.integers(0, 40, 400)] + 0.3 * rng.normal(size=(400, 16))).astype(np.float32) * 0.02
    result = {}
    for restart in (False, True):
        params = QuantizerParams(num_levels=3, codebook_size=16, e_dim=8, encoder_layers=(32,), epochs=40,
                                 batch_size=128, con_weights=(0, 0, 0), dead_code_restart=restart,
                                 weight_decay=0.0, eval_step=1, kmeans_iters=50, learning_rate=0.01)
        best = train_quantizers({"v": x}, "rqvae", params, 1, "cpu", show_progress=False)["v"]
        result[restart] = (best.rate, len(np.unique(best.codes[:, 0])))
    assert result[True][1] == 16 and result[False][1] < 16
    assert result[True][0] < result[False][0] - 0.2


def test_encoder_outputs_in_chunks_equal_one_pass():
    """The codebook initialisation encodes every item; in chunks (so that 10^6 items do not hold
    every hidden activation at once) it must give the single pass's outputs."""
    from recbole_macrec.quantization.train import encoder_outputs

    views = {"text": _tiny_views(n=50)["text"]}
    model = build_models(views, _tiny_params(projection_dim=0), "rqvae", "cpu")["text"]
    x = torch.as_tensor(views["text"])
    with torch.no_grad():
        whole = model.encoder(x)
    assert torch.allclose(encoder_outputs(model, x, chunk=7), whole, atol=1e-6)
    assert torch.equal(encoder_outputs(model, x), whole)   # below the chunk size: the single pass
