import json
import os
import stat
import subprocess
import sys

import pytest

from conftest import ROOT, TINY_T5, instruments_src, tiny_config_dict
from dataset_prep.mql4grec_to_recbole import ConversionError, convert, main

TINY_RUN = ["--d_model=16", "--d_kv=8", "--d_ff=32", "--num_layers=1", "--num_decoder_layers=1", "--num_heads=2",
            "--epochs=1", "--train_batch_size=64", "--gr_grad_accum=1", "--sid_epochs=2", "--sid_encoder_layers=[16]",
            "--sid_projection_dim=16", "--sid_codebook_size=4", "--sid_num_levels=3", "--sid_pseudo_label_k=4",
            "--sid_e_dim=8", "--sid_con_weights=[0,0.1,0.1]", "--view_dim=8", "--gr_bf16=False",
            "--state=WARNING", "--show_progress=False", "--use_gpu=False"]


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


def _macrec_layout(folder, n_users=30, n_items=20, codes=("lemb",), item_text=True, drop=None):
    """MACRec's published layout: <name>.inter.json keyed by user index, <name>.item2id, no
    user2id; optional item.json and index_<suffix>.json."""
    folder.mkdir(parents=True, exist_ok=True)
    seqs = {str(u): [(u + k) % n_items for k in range(5)] for u in range(n_users)}
    (folder / "Arts.inter.json").write_text(json.dumps(seqs))
    (folder / "Arts.item2id").write_text("".join(f"B{i:05d}\t{i}\n" for i in range(n_items) if i != drop))
    if item_text:
        (folder / "Arts.item.json").write_text(json.dumps(
            {str(i): {"title": f"art {i} {'red blue green'.split()[i % 3]}", "description": "paint"}
             for i in range(n_items)}))
    for suffix in codes:
        (folder / f"Arts.index_{suffix}.json").write_text(json.dumps(
            {str(i): [f"<a_{i // 9}>", f"<b_{(i // 3) % 3}>", f"<c_{i % 3}>"] for i in range(n_items)}))
    return seqs


def test_macrec_layout_with_an_item_map_only_converts_with_the_json_keys_as_users(workdir):
    seqs = _macrec_layout(workdir / "src")
    stats = convert(workdir / "src", workdir / "dataset" / "Arts")
    assert stats["users"] == len(seqs) and stats["items"] == 20
    inter = (workdir / "dataset" / "Arts" / "Arts.inter").read_text().splitlines()
    assert inter[1:3] == ["0\t0\t0.0", "0\t1\t1.0"]


@pytest.mark.parametrize("damage, match", [
    (lambda src: (src / "Arts.item2id").write_text("".join(f"B{i}\t{i}\n" for i in range(19))),
     r"Arts.inter.json: item '19' of user '\d+' is not in Arts.item2id"),
    (lambda src: (src / "Arts.item2id").write_text("A\t0\nB\t0\n"), r"Arts.item2id:2: duplicate idx '0'"),
    (lambda src: ((src / "Arts.user2id").write_text("u\t0\n"), os.remove(src / "Arts.item2id")),
     r"Arts.user2id exists but .*Arts.item2id does not"),
])
def test_bad_item_maps_are_named_and_nothing_is_written(workdir, damage, match):
    _macrec_layout(workdir / "src")
    damage(workdir / "src")
    with pytest.raises(ConversionError, match=match):
        convert(workdir / "src", workdir / "dataset" / "Arts")
    assert not (workdir / "dataset" / "Arts").exists()


def _next_command(workdir, capsys, **layout):
    _macrec_layout(workdir / "src", **layout)
    main([f"--src={workdir / 'src'}", f"--out={workdir / 'dataset' / 'Arts'}"])
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("next: ")][0]
    return line[len("next: "):]


def _run_as_printed(workdir, command):
    import shlex

    args = shlex.split(command)
    assert args[:2] == ["python", "run_recbole.py"]
    proc = subprocess.run([sys.executable, str(ROOT / "run_recbole.py"), *args[2:], *TINY_RUN], cwd=workdir,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.parametrize("layout, model", [
    (dict(codes=("lemb",)), "TIGER"),            # one published view: TIGER runs on it as written
    (dict(codes=("lemb", "vitemb")), "MACRec"),  # two published views: MACRec
    (dict(codes=()), "MACRec"),                  # no codes: text (item text) + collab trained
    (dict(codes=("vitemb",), item_text=False), "TIGER"),   # one non-text view: TIGER on that view
])
def test_the_printed_next_command_runs_as_written(workdir, capsys, layout, model):
    command = _next_command(workdir, capsys, **layout)
    assert f"--model={model}" in command
    _run_as_printed(workdir, command)
    written = (workdir / "dataset" / "Arts" / "Arts.yaml").read_text()
    assert command in written.splitlines()[0]


def test_the_yaml_comment_gives_the_exact_macrec_command(workdir, capsys):
    _next_command(workdir, capsys, codes=("lemb",))
    written = (workdir / "dataset" / "Arts" / "Arts.yaml").read_text()
    comment = next(line for line in written.splitlines() if "MACRec and MQL4GRec need two views" in line)
    command = comment[comment.index("python run_recbole.py"):]
    assert '--sid_method=macrec --sid_views="[text,collab]"' in command
    _run_as_printed(workdir, command)


def test_no_second_view_says_what_to_add(workdir, capsys):
    command = _next_command(workdir, capsys, codes=("lemb",), item_text=False)
    assert "--model=TIGER" in command
    written = (workdir / "dataset" / "Arts" / "Arts.yaml").read_text()
    assert "published codes cover text, and codes can be trained from collab only" in written
    assert "--sid_views=\"[collab]\"" not in written


def test_converted_files_have_the_usual_permissions(workdir):
    _macrec_layout(workdir / "src")
    old = os.umask(0o022)
    try:
        convert(workdir / "src", workdir / "dataset" / "Arts")
    finally:
        os.umask(old)
    folder = workdir / "dataset" / "Arts"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    for path in folder.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path.name
