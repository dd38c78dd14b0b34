import numpy as np
import pytest

from conftest import tiny_config_dict
from recbole_macrec.data.item_views import ItemViewError, load_item_view, save_item_view


def test_view_joins_by_token_not_position(tmp_path):
    path = tmp_path / "d.text.npz"
    save_item_view(path, ["a", "b", "c"], np.eye(3))
    items, emb, _ = load_item_view(path, items=["c", "a"])
    assert emb.tolist() == [[0, 0, 1], [1, 0, 0]]


@pytest.mark.parametrize("ids,emb,message", [
    (["a", "a"], np.zeros((2, 2)), "duplicate item id 'a'"),
    (["a", "b"], np.array([[0.0, 1.0], [np.nan, 0.0]]), "NaN/Inf in the row of item 'b'"),
    (["a", "b"], np.zeros((3, 2)), "shape"),
])
def test_bad_views_are_rejected_naming_file_and_item(tmp_path, ids, emb, message):
    path = tmp_path / "v.npz"
    np.savez(path, item_ids=np.asarray(ids), emb=emb)
    with pytest.raises(ItemViewError, match=message) as err:
        load_item_view(path)
    assert "v.npz" in str(err.value)


def test_missing_item_and_dimension_mismatch(tmp_path):
    path = tmp_path / "v.npz"
    save_item_view(path, ["a", "b"], np.ones((2, 3)))
    with pytest.raises(ItemViewError, match="item 'z'"):
        load_item_view(path, items=["a", "z"])
    with pytest.raises(ItemViewError, match="dimension 3, expected 8"):
        load_item_view(path, dim=8)
    with pytest.raises(ItemViewError, match="not found"):
        load_item_view(tmp_path / "nothing.npz")


def test_collab_view_sees_only_training_interactions(workdir):
    from recbole_macrec.config import Config
    from recbole_macrec.data.default_views import ensure_item_views

    folder = workdir / "data" / "leak"
    folder.mkdir(parents=True)
    rows = ["user_id:token\titem_id:token\ttimestamp:float"]
    t = 0
    for u in range(12):
        seq = [f"i{(u + k) % 6}" for k in range(5)]
        seq[-1] = "only_test"  # every user's last (test) item
        seq[-2] = "only_valid"  # every user's second-to-last (valid) item
        for item in seq:
            rows.append(f"u{u}\t{item}\t{t}")
            t += 1
    (folder / "leak.inter").write_text("\n".join(rows) + "\n")
    cfg = tiny_config_dict(workdir / "data", load_col={"inter": ["user_id", "item_id", "timestamp"]}, view_dim=4)
    config = Config(model="SASRec", dataset="leak", config_dict=cfg)
    views = ensure_item_views(config, ["collab"])
    items, emb = views["collab"]
    row = dict(zip(items, emb))
    assert np.allclose(row["only_test"], 0) and np.allclose(row["only_valid"], 0)
    assert not np.allclose(row["i0"], 0)
    # cached: a second call reads the file instead of recomputing
    mtime = (folder / "leak.collab.npz").stat().st_mtime_ns
    ensure_item_views(config, ["collab"])
    assert (folder / "leak.collab.npz").stat().st_mtime_ns == mtime


def test_text_view_from_item_file(tiny_dataset):
    from recbole_macrec.config import Config
    from recbole_macrec.data.default_views import ensure_item_views

    cfg = tiny_config_dict(tiny_dataset, text_view_fields=["title", "class"], view_dim=8)
    config = Config(model="SASRec", dataset="tiny", config_dict=cfg)
    items, emb = ensure_item_views(config, ["text"])["text"]
    assert emb.shape == (30, 8) and len(set(items)) == 30
    row = dict(zip(items, emb))
    # same genre -> more similar text vectors than different genre (i0 and i6 are both "rock")
    cos = lambda a, b: a @ b / np.linalg.norm(a) / np.linalg.norm(b)
    assert cos(row["i0"], row["i6"]) > cos(row["i0"], row["i1"])


def test_text_view_from_a_local_pretrained_encoder(tiny_dataset, tmp_path):
    import torch
    from transformers import AutoModel, AutoTokenizer

    from conftest import tiny_text_encoder
    from recbole_macrec.config import Config
    from recbole_macrec.data.default_views import ensure_item_views
    from recbole_macrec.files import file_digest

    encoder = tiny_text_encoder(tmp_path / "bert")
    digest = file_digest(encoder / "model.safetensors")
    cfg = tiny_config_dict(tiny_dataset, text_view_fields=["title", "class"], text_encoder=str(encoder),
                           text_encoder_sha256=digest)
    items, emb = ensure_item_views(Config(model="SASRec", dataset="tiny", config_dict=cfg), ["text"])["text"]
    assert emb.shape == (30, 8)
    # item i3: per field (title "item number 3 pop", class "pop") the mean-pooled last hidden state, then the mean
    tokenizer, model = AutoTokenizer.from_pretrained(encoder), AutoModel.from_pretrained(encoder).eval()
    with torch.no_grad():
        pooled = [model(**tokenizer(t, return_tensors="pt")).last_hidden_state.mean(1)[0]
                  for t in ("item number 3 pop", "pop")]
    np.testing.assert_allclose(dict(zip(items, emb))["i3"], torch.stack(pooled).mean(0).numpy(), atol=1e-5)
    # another encoder is another view: recomputed, not reused
    other = tiny_text_encoder(tmp_path / "bert2")
    cfg.update(text_encoder=str(other), text_encoder_sha256=None)
    _, again = ensure_item_views(Config(model="SASRec", dataset="tiny", config_dict=cfg), ["text"])["text"]
    assert not np.allclose(again, emb)


def test_bad_text_encoders_are_named(tiny_dataset, tmp_path):
    from conftest import tiny_text_encoder
    from recbole_macrec.config import Config
    from recbole_macrec.data.default_views import ensure_item_views
    from recbole_macrec.data.text_encoder import TextEncoderError

    encoder = tiny_text_encoder(tmp_path / "bert")
    cases = [({"text_encoder": str(encoder), "text_encoder_sha256": "ab" * 32}, "does not match text_encoder_sha256"),
             ({"text_encoder": str(tmp_path)}, "has no weights"),
             ({"text_encoder": str(tmp_path / "nowhere")}, "text encoder folder not found")]
    for setting, match in cases:
        cfg = tiny_config_dict(tiny_dataset, text_view_fields=["title", "class"], **setting)
        with pytest.raises(TextEncoderError, match=match):
            ensure_item_views(Config(model="SASRec", dataset="tiny", config_dict=cfg), ["text"])


def test_a_users_own_view_file_is_never_replaced(tiny_dataset):
    """A view file the project did not compute (no source hash) is used, not overwritten, even
    where the project could compute that view (collab always; text with text_view_fields)."""
    from recbole_macrec.config import Config
    from recbole_macrec.data.default_views import ensure_item_views
    from recbole_macrec.data.item_views import save_item_view

    folder = tiny_dataset / "tiny"
    mine = np.arange(30 * 3, dtype=np.float32).reshape(30, 3)
    for view in ("collab", "text"):
        save_item_view(folder / f"tiny.{view}.npz", [f"i{i}" for i in range(30)], mine)
    before = {v: (folder / f"tiny.{v}.npz").read_bytes() for v in ("collab", "text")}
    cfg = tiny_config_dict(tiny_dataset, text_view_fields=["title", "class"], view_dim=8)
    views = ensure_item_views(Config(model="SASRec", dataset="tiny", config_dict=cfg), ["text", "collab"])
    for view in ("collab", "text"):
        assert (folder / f"tiny.{view}.npz").read_bytes() == before[view]
        np.testing.assert_array_equal(views[view][1], mine)


def test_an_unreadable_view_file_is_named(tiny_dataset):
    from recbole_macrec.config import Config
    from recbole_macrec.data.default_views import ensure_item_views
    from recbole_macrec.data.item_views import ItemViewError

    (tiny_dataset / "tiny" / "tiny.image.npz").write_bytes(b"not a zip file")
    config = Config(model="SASRec", dataset="tiny", config_dict=tiny_config_dict(tiny_dataset))
    with pytest.raises(ItemViewError, match=r"tiny.image.npz: not a readable .npz item view"):
        ensure_item_views(config, ["image"])
