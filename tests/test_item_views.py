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
