import json
import os

import numpy as np
import pytest

from conftest import instruments_src, tiny_config_dict, write_codes
from recbole_macrec.semantic_ids import SemanticIdError, build_semantic_ids, read_report

TINY_SID = dict(sid_views=["text", "collab"], text_view_fields=["title", "class"], view_dim=8,
                sid_num_levels=3, sid_codebook_size=4, sid_e_dim=8, sid_encoder_layers=[16],
                sid_epochs=2, sid_batch_size=16, sid_pseudo_label_k=4, sid_con_weights=[0, 0.1, 0.1],
                sid_projection_dim=8, sid_kmeans_iters=10)


def _config(data_path, **kw):
    from recbole_macrec.config import Config

    return Config(model="SASRec", dataset="tiny", config_dict=tiny_config_dict(data_path, **{**TINY_SID, **kw}))


def _recbole_codes(config, folder, views):
    from recbole.data import create_dataset, data_preparation

    config["data_path"] = folder
    config["load_col"]["item"] = ["item_id", *[f"{v}_sid" for v in views]]
    ds = data_preparation(config, create_dataset(config))[0]._dataset
    feat = ds.get_item_feature()
    tokens = ds.field2id_token["item_id"]
    return {v: dict(zip(tokens[1:], feat[f"{v}_sid"][1:].long().tolist())) for v in views}


def test_macrec_prestage_writes_unique_codes_as_recbole_item_features(tiny_dataset):
    config = _config(tiny_dataset)
    folder = build_semantic_ids(config, "macrec", show_progress=False)
    report = read_report(folder)
    assert report["method"] == "macrec" and report["n_items"] == 30
    for view in report["per_view"]:
        assert view["collision_rate_after"] == 0
        assert 0 <= view["collision_rate_before"] <= 1
        assert len(view["codebook_before"]) == 3
    codes = _recbole_codes(_config(tiny_dataset), folder, ["text", "collab"])
    for view, table in codes.items():
        assert len(table) == 30 and len({tuple(c) for c in table.values()}) == 30
        assert all(len(c) == 3 and all(0 <= x < 4 for x in c) for c in table.values())
    # the user's own .item columns are kept cell for cell
    original = (tiny_dataset / "tiny" / "tiny.item").read_text().splitlines()
    derived = (folder and open(os.path.join(folder, "tiny.item")).read().splitlines())
    assert derived[0].startswith(original[0] + "\t")
    kept = {line.split("\t")[0]: line.split("\t")[:3] for line in derived[1:]}
    assert all(kept[line.split("\t")[0]] == line.split("\t") for line in original[1:])
    assert (tiny_dataset / "tiny" / "tiny.item").read_text().splitlines() == original


def test_cached_result_is_reused_and_stale_result_recomputed(tiny_dataset):
    folder = build_semantic_ids(_config(tiny_dataset), "rqvae", show_progress=False)
    stamp = os.path.getmtime(os.path.join(folder, "sid_report.json"))
    assert build_semantic_ids(_config(tiny_dataset), "rqvae", show_progress=False) == folder
    assert os.path.getmtime(os.path.join(folder, "sid_report.json")) == stamp
    # another setting gets its own folder; the first one stays
    other = build_semantic_ids(_config(tiny_dataset, seed=7), "rqvae", show_progress=False)
    assert other != folder and read_report(other)["seed"] == 7 and os.path.isdir(folder)
    # a changed input file is other data: a folder of its own, never the cached result
    old_hash = read_report(folder)["input_hash"]
    with open(tiny_dataset / "tiny" / "tiny.inter", "a") as f:
        f.write("u0\ti3\t99999\n")
    changed = build_semantic_ids(_config(tiny_dataset), "rqvae", show_progress=False)
    assert changed != folder and read_report(changed)["input_hash"] != old_hash
    # changed item text with the same catalogue and training pairs (the text view changes): the
    # same folder, recomputed in place
    path = tiny_dataset / "tiny" / "tiny.item"
    path.write_text(path.read_text().replace("item number 0 ", "item number zero "))
    assert build_semantic_ids(_config(tiny_dataset), "rqvae", show_progress=False) == changed
    assert read_report(changed)["input_hash"] != read_report(folder)["input_hash"]


def test_first_run_loads_the_dataset_once_for_both_views_and_the_codes(tiny_dataset, monkeypatch):
    import recbole.data.dataset as recbole_dataset

    from recbole_macrec.data import default_views

    built = []

    class CountingDataset(recbole_dataset.Dataset):
        def __init__(self, config):
            built.append(config["data_path"])
            super().__init__(config)

    monkeypatch.setattr(recbole_dataset, "Dataset", CountingDataset)
    default_views._last_catalogue.clear()
    build_semantic_ids(_config(tiny_dataset), "rqvae", show_progress=False)   # computes text + collab
    assert len(built) == 1
    # changed data files are a new catalogue, even under the same config
    with open(tiny_dataset / "tiny" / "tiny.inter", "a") as f:
        f.write("u0\ti3\t99999\n")
    items, pairs, _ = default_views.catalogue_and_train_pairs(_config(tiny_dataset))
    assert len(built) == 2 and len(items) == 30


def test_failed_run_keeps_previous_output(tiny_dataset):
    folder = build_semantic_ids(_config(tiny_dataset), "rqvae", show_progress=False)
    before = read_report(folder)
    with pytest.raises(ValueError, match="sid_codebook_size=64 exceeds"):
        build_semantic_ids(_config(tiny_dataset, sid_codebook_size=64), "rqvae", show_progress=False)
    assert read_report(folder) == before


def test_view_missing_an_item_is_named(tiny_dataset):
    from recbole_macrec.data.item_views import ItemViewError, save_item_view

    save_item_view(tiny_dataset / "tiny" / "tiny.image.npz", [f"i{i}" for i in range(29)], np.ones((29, 3)))
    with pytest.raises(SemanticIdError, match=r"tiny.image.npz: item 'i29'"):
        build_semantic_ids(_config(tiny_dataset, sid_views=["text", "image"]), "macrec", show_progress=False)
    with pytest.raises(ItemViewError, match="item view 'photo' not found"):
        build_semantic_ids(_config(tiny_dataset, sid_views=["photo"]), "rqvae", show_progress=False)


def test_import_rejects_codes_of_another_dataset(tiny_dataset):
    path = tiny_dataset / "tiny" / "tiny.text.codes.json"
    path.write_text(json.dumps({f"x{i}": [1, 2] for i in range(30)}))
    with pytest.raises(SemanticIdError, match=r"item 'i\d+' of the dataset 'tiny' has no code \(30 missing\)"):
        build_semantic_ids(_config(tiny_dataset, sid_views=["text"]), "import", show_progress=False)
    codes = {f"i{i}": [i % 3, i] for i in range(30)}
    codes["zz"] = [0, 0]
    path.write_text(json.dumps(codes))
    with pytest.raises(SemanticIdError, match="1 items are not in dataset 'tiny'"):
        build_semantic_ids(_config(tiny_dataset, sid_views=["text"]), "import", show_progress=False)
    codes = {f"i{i}": [i % 3, i] for i in range(30)}
    codes["i7"] = [1, 2, 3]
    path.write_text(json.dumps(codes))
    with pytest.raises(SemanticIdError, match=r"item 'i\d+' has 2 codes, item 'i7' has 3"):
        build_semantic_ids(_config(tiny_dataset, sid_views=["text"]), "import", show_progress=False)


def test_import_of_instruments_keeps_published_codes_of_non_colliding_items(workdir):
    from dataset_prep.mql4grec_to_recbole import convert
    from recbole_macrec.config import Config

    src = instruments_src()
    convert(src, workdir / "data" / "Instruments")
    cfg = tiny_config_dict(workdir / "data", load_col={"inter": ["user_id", "item_id", "timestamp"]})
    config = Config(model="SASRec", dataset="Instruments", config_dict=cfg)
    folder = build_semantic_ids(config, "import", show_progress=False)
    report = {v["view"]: v for v in read_report(folder)["per_view"]}
    assert report["text"]["collision_rate_before"] == pytest.approx(262 / 6250)
    assert report["text"]["collision_rate_after"] == 0 and report["image"]["items_moved"] == 0
    config = Config(model="SASRec", dataset="Instruments", config_dict=cfg)
    got = _recbole_codes(config, folder, ["text", "image"])
    published = json.loads((src / "Instruments.index_lemb.json").read_text())
    tuples = {k: tuple(int(t.split("_")[1][:-1]) for t in v) for k, v in published.items()}
    counts = {}
    for t in tuples.values():
        counts[t] = counts.get(t, 0) + 1
    unique_items = [k for k, t in tuples.items() if counts[t] == 1]
    assert len(unique_items) > 5000
    assert all(tuple(got["text"][k]) == tuples[k] for k in unique_items)
    assert len({tuple(c) for c in got["text"].values()}) == 6250


def test_another_text_encoder_is_another_setting_with_its_own_folder(tiny_dataset):
    """Codes from TF-IDF and from a pretrained encoder must not share (and take turns overwriting)
    one derived folder: the settings that make a computed view are part of its key."""
    from recbole_macrec.quantization.train import QuantizerParams
    from recbole_macrec.semantic_ids import output_dir, settings_key

    folders = set()
    for encoder, dim in ((None, 16), ("/models/minilm", 16), (None, 8)):
        config = _config(tiny_dataset, text_encoder=encoder, view_dim=dim)
        params = QuantizerParams.from_config(config, "rqvae")
        folders.add(output_dir(config, "rqvae", settings_key(config, "rqvae", ["text"], params)))
    assert len(folders) == 3


def _config(data_path, model="SASRec", **kw):
    from recbole_macrec.config import Config

    return Config(model=model, dataset="tiny", config_dict=tiny_config_dict(data_path, **{**TINY_SID, **kw}))


def _derived_items(folder):
    from recbole_macrec.data.atomic import read_atomic

    return len(read_atomic(os.path.join(folder, "tiny.item"))[0])


def test_semantic_id_cache_follows_recboles_filters(tiny_dataset):
    """A filter changes the catalogue: another folder, never the cached one of other data."""
    from recbole_macrec.semantic_ids import build_semantic_ids, read_report

    filtered = build_semantic_ids(_config(tiny_dataset, item_inter_num_interval="[10,inf)"), "rqvae",
                                  show_progress=False)
    full = build_semantic_ids(_config(tiny_dataset), "rqvae", show_progress=False)
    assert filtered != full
    assert _derived_items(full) == 30 and _derived_items(filtered) < 30
    report = read_report(filtered)
    assert report["data_settings"]["item_inter_num_interval"] == "[10,inf)" and report["data_digest"]
    # a user filter changes the training pairs (the collab view): another folder too
    users = build_semantic_ids(_config(tiny_dataset, user_inter_num_interval="[8,inf)"), "rqvae",
                               show_progress=False)
    assert users not in (full, filtered)


def test_imported_codes_outside_the_codebook_are_refused(tiny_dataset):
    from recbole_macrec.semantic_ids import SemanticIdError, build_semantic_ids

    text, _ = write_codes(tiny_dataset / "tiny")
    text["i4"] = [0, 9, 1]
    (tiny_dataset / "tiny" / "tiny.text.codes.json").write_text(json.dumps(text))
    with pytest.raises(SemanticIdError, match=r"item 'i4' has code 9 at level 1, outside the codebook 0..3"):
        build_semantic_ids(_config(tiny_dataset, sid_views=["text"]), "import", show_progress=False)
    (tiny_dataset / "tiny" / "tiny.text.codes.json").write_text("{broken")
    with pytest.raises(SemanticIdError, match=r"tiny.text.codes.json: not valid JSON"):
        build_semantic_ids(_config(tiny_dataset, sid_views=["text"]), "import", show_progress=False)
