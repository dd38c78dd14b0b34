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
    convert(src, workdir / "out" / "Instruments")
    codes = json.loads((workdir / "out" / "Instruments" / "Instruments.text.codes.json").read_text())
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
        convert(workdir / "src", workdir / "out" / "Toy")
    assert not (workdir / "out" / "Toy").exists()


def test_converter_rejects_user_too_short_for_leave_one_out(workdir):
    _write_src(workdir / "src", {"0": [0, 1, 2], "1": [0, 1]}, item2id=[0, 1, 2], user2id=[0, 1])
    with pytest.raises(ConversionError, match=r"user '1' has 2 interactions"):
        convert(workdir / "src", workdir / "out" / "Toy")
    assert not (workdir / "out" / "Toy").exists()


def test_converter_writes_item_text_and_embedding_views(workdir):
    import numpy as np

    from recbole_macrec.data.item_views import load_item_view

    _write_src(workdir / "src", {"0": [2, 0, 1], "1": [1, 2, 0]}, item2id=[0, 1, 2], user2id=[0, 1])
    emb = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.save(workdir / "src" / "Toy.emb-ViT-L-14.npy", emb)
    (workdir / "src" / "Toy.item.json").write_text(json.dumps(
        {"0": {"title": "red\tguitar", "brand": "X"}, "1": {"title": "drum"}, "2": {"title": "horn"}}))
    convert(workdir / "src", workdir / "out" / "Toy")
    items, got, _ = load_item_view(workdir / "out" / "Toy" / "Toy.image.npz", items=["2", "0"])
    assert got.tolist() == [emb[2].tolist(), emb[0].tolist()]
    item_file = (workdir / "out" / "Toy" / "Toy.item").read_text().splitlines()
    assert item_file[1].split("\t")[:2] == ["0", "red guitar"]
    inter = (workdir / "out" / "Toy" / "Toy.inter").read_text().splitlines()
    assert inter[1:4] == ["0\t2\t0.0", "0\t0\t1.0", "0\t1\t2.0"]


def _lcrec_layout(folder, n_users=40, n_items=30, seed=0, index=True):
    """The LC-Rec / LETTER layout: inter.json, item.json, index.json, no id maps (keys are ids)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    sequences = {str(u): [int((s + k) % n_items) for k in range(int(rng.integers(4, 9)))]
                 for u, s in enumerate(rng.integers(0, n_items, n_users))}
    (folder / "Games.inter.json").write_text(json.dumps(sequences))
    genres = ["rock", "jazz", "folk"]
    (folder / "Games.item.json").write_text(json.dumps(
        {str(i): {"title": f"game {i} {genres[i % 3]}", "description": f"a {genres[i % 3]} game",
                  "brand": "B", "categories": "Games"} for i in range(n_items)}))
    if index:
        (folder / "Games.index.json").write_text(json.dumps(
            {str(i): [f"<a_{i // 9}>", f"<b_{(i // 3) % 3}>", f"<c_{i % 3}>"] for i in range(n_items)}))
    return sequences


def test_lcrec_layout_converts_and_runs_from_the_written_yaml(workdir):
    import yaml

    from conftest import TINY_T5
    from recbole_macrec.quick_start import run_recbole

    _lcrec_layout(workdir / "src")
    out = workdir / "dataset" / "Games"
    stats = convert(workdir / "src", out)
    assert stats["dataset"] == "Games" and stats["items"] == 30 and stats["users"] == 40
    written = yaml.safe_load((out / "Games.yaml").read_text())
    assert written["sid_method"] == "import" and written["sid_views"] == ["text"]
    assert written["data_path"] == str(workdir / "dataset")
    assert written["load_col"]["item"][:2] == ["item_id", "title"]
    assert json.loads((out / "Games.text.codes.json").read_text())["4"] == [0, 1, 1]
    small = {k: v for k, v in TINY_T5.items() if not k.startswith("sid_")}
    small.update(show_progress=False, state="WARNING", use_gpu=False, epochs=1)
    result = run_recbole("TIGER", "Games", config_file_list=[str(out / "Games.yaml")], config_dict=small)
    assert 0 <= result["test_result"]["ndcg@10"] <= 1
    # two-view models: the yaml's comment says how, from the item text and the training interactions
    assert '--sid_method=macrec --sid_views="[text,collab]"' in (out / "Games.yaml").read_text()
    assert written["text_view_fields"] == ["title", "description"]


def test_yaml_without_codes_offers_text_and_collab(workdir):
    import yaml

    _lcrec_layout(workdir / "src", index=False)
    convert(workdir / "src", workdir / "dataset" / "Games")
    written = yaml.safe_load((workdir / "dataset" / "Games" / "Games.yaml").read_text())
    assert written["sid_views"] == ["text", "collab"] and "sid_method" not in written
    assert written["text_view_fields"] == ["title", "description"]


@pytest.mark.parametrize("damage,match", [
    (lambda src: (src / "Games.inter.json").write_text(json.dumps({"alice": [0, 1, 2]})),
     r"Games.inter.json: user 'alice' is not an integer; without <name>.item2id"),
    (lambda src: (src / "Games.item.json").write_text(json.dumps({"0": {"title": "x"}})),
     r"Games.item.json: item '1' of Games.inter.json has no entry"),
    (lambda src: (src / "Games.index.json").write_text(json.dumps(
        {**{str(i): ["<a_1>", "<b_2>"] for i in range(30)}, "99": ["<a_0>", "<b_0>"]})),
     r"Games.index.json: item '99' is not an item of the dataset"),
    (lambda src: (src / "Games.index.json").write_text(json.dumps(
        {str(i): ["<a_1>", "<b_2>"] + (["<c_3>"] if i == 5 else []) for i in range(30)})),
     r"Games.index.json: item '5' has 3 codes, item '0' has 2"),
    (lambda src: (src / "Games.index.json").write_text(json.dumps({str(i): ["a1", "b2"] for i in range(30)})),
     r"Games.index.json: item '0': code token 'a1' is not like '<a_12>'"),
    (lambda src: (src / "Games.item2id").write_text("A\t0\n"), r"Games.inter.json: item '\d+' of user '\d+' is not in "
                                                               r"Games.item2id"),
    (lambda src: (src / "Games.item.json").write_text("{not json"), r"Games.item.json: not valid JSON"),
])
def test_bad_published_layouts_are_named_and_leave_nothing(workdir, damage, match):
    _lcrec_layout(workdir / "src")
    damage(workdir / "src")
    with pytest.raises(ConversionError, match=match):
        convert(workdir / "src", workdir / "dataset" / "Games")
    assert not (workdir / "dataset" / "Games").exists()


def test_view_option_without_equals_is_a_usage_error(workdir, capsys):
    from dataset_prep.mql4grec_to_recbole import main

    _lcrec_layout(workdir / "src")
    with pytest.raises(SystemExit):
        main([f"--src={workdir / 'src'}", f"--out={workdir / 'Games'}", "--view", "lemb"])
    assert "expected SUFFIX=VIEW" in capsys.readouterr().err
