import json

import pytest

from conftest import instruments_src, tiny_config_dict
from dataset_prep.mql4grec_to_recbole import ConversionError, convert


def _published_rows(path, max_len=20):
    rows = []
    with open(path) as f:
        next(f)
        for line in f:
            user, hist, target = line.rstrip("\n").split("\t")
            rows.append((user, tuple(hist.split(" ")[-max_len:]), target))
    return sorted(rows)


def _recbole_rows(split):
    ds = split._dataset
    uid, iid = ds.uid_field, ds.iid_field
    users = ds.id2token(uid, split._dataset.inter_feat[uid].numpy())
    targets = ds.id2token(iid, ds.inter_feat[iid].numpy())
    lists = ds.inter_feat[iid + "_list"].numpy()
    lengths = ds.inter_feat["item_length"].numpy()
    return sorted(
        (str(u), tuple(ds.id2token(iid, lists[r, : lengths[r]])), str(t))
        for r, (u, t) in enumerate(zip(users, targets))
    )


def test_instruments_split_equals_published_split(workdir):
    from recbole.data import create_dataset, data_preparation

    from recbole_macrec.config import Config

    src = instruments_src()
    stats = convert(src, workdir / "data" / "Instruments")
    assert (stats["users"], stats["items"], stats["interactions"]) == (17112, 6250, 136226)
    config = Config(model="SASRec", dataset="Instruments",
                    config_dict=tiny_config_dict(workdir / "data", load_col={"inter": ["user_id", "item_id", "timestamp"]}))
    train, valid, test = data_preparation(config, create_dataset(config))
    for split, name in ((train, "train"), (valid, "valid"), (test, "test")):
        assert _recbole_rows(split) == _published_rows(src / f"Instruments.{name}.inter"), name


def test_instruments_codes_are_imported_as_integers(workdir):
    src = instruments_src()
    convert(src, workdir / "out")
    codes = json.loads((workdir / "out" / "Instruments.text.codes.json").read_text())
    published = json.loads((src / "Instruments.index_lemb.json").read_text())
    assert len(codes) == 6250
    assert codes["0"] == [int(t.split("_")[1][:-1]) for t in published["0"]]


def _write_src(folder, sequences, item2id, user2id):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Toy.inter.json").write_text(json.dumps(sequences))
    (folder / "Toy.item2id").write_text("".join(f"A{i}\t{i}\n" for i in item2id))
    (folder / "Toy.user2id").write_text("".join(f"U{u}\t{u}\n" for u in user2id))


def test_converter_names_item_missing_from_item2id(workdir):
    _write_src(workdir / "src", {"0": [0, 1, 2], "1": [0, 7, 1]}, item2id=[0, 1, 2], user2id=[0, 1])
    with pytest.raises(ConversionError, match=r"item '7' of user '1' is not in Toy.item2id"):
        convert(workdir / "src", workdir / "out")
    assert not (workdir / "out").exists()


def test_converter_rejects_user_too_short_for_leave_one_out(workdir):
    _write_src(workdir / "src", {"0": [0, 1, 2], "1": [0, 1]}, item2id=[0, 1, 2], user2id=[0, 1])
    with pytest.raises(ConversionError, match=r"user '1' has 2 interactions"):
        convert(workdir / "src", workdir / "out")
    assert not (workdir / "out").exists()


def test_converter_writes_item_text_and_embedding_views(workdir):
    import numpy as np

    from recbole_macrec.data.item_views import load_item_view

    _write_src(workdir / "src", {"0": [2, 0, 1], "1": [1, 2, 0]}, item2id=[0, 1, 2], user2id=[0, 1])
    emb = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.save(workdir / "src" / "Toy.emb-ViT-L-14.npy", emb)
    (workdir / "src" / "Toy.item.json").write_text(json.dumps(
        {"0": {"title": "red\tguitar", "brand": "X"}, "1": {"title": "drum"}, "2": {"title": "horn"}}))
    convert(workdir / "src", workdir / "out")
    items, got, _ = load_item_view(workdir / "out" / "Toy.image.npz", items=["2", "0"])
    assert got.tolist() == [emb[2].tolist(), emb[0].tolist()]
    item_file = (workdir / "out" / "Toy.item").read_text().splitlines()
    assert item_file[1].split("\t")[:2] == ["0", "red guitar"]
    inter = (workdir / "out" / "Toy.inter").read_text().splitlines()
    assert inter[1:4] == ["0\t2\t0.0", "0\t0\t1.0", "0\t1\t2.0"]
