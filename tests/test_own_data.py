"""A new user's own data: MACRec's published layout (an item map, no user map), a converted
dataset whose printed command runs as written, MACRec asked for one view, interactions that
RecBole leaves out counted wherever they go, files with the usual permissions, and CPU
processes that share the cores."""
import json
import os
import stat
import subprocess
import sys

import pytest

from conftest import ROOT, TINY_T5, tiny_config_dict
from dataset_prep.mql4grec_to_recbole import ConversionError, convert, main
from recbole_macrec.errors import SettingError

TINY_RUN = ["--d_model=16", "--d_kv=8", "--d_ff=32", "--num_layers=1", "--num_decoder_layers=1", "--num_heads=2",
            "--epochs=1", "--train_batch_size=64", "--gr_grad_accum=1", "--sid_epochs=2", "--sid_encoder_layers=[16]",
            "--sid_projection_dim=16", "--sid_codebook_size=4", "--sid_num_levels=3", "--sid_pseudo_label_k=4",
            "--sid_e_dim=8", "--sid_con_weights=[0,0.1,0.1]", "--view_dim=8", "--gr_bf16=False", "--state=WARNING", "--show_progress=False",
            "--use_gpu=False"]


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


def test_macrec_with_one_view_stops_before_any_work_naming_the_setting(tiny_dataset):
    from recbole_macrec.quick_start import run_recbole

    with pytest.raises(SettingError, match=r"MACRec needs exactly two item views, and sid_views = \['text'\] gives 1"
                                           r".*--sid_views=\"\[text,collab\]\".*--sid_method=macrec"):
        run_recbole("MACRec", "tiny", config_dict=tiny_config_dict(tiny_dataset, sid_method="import",
                                                                   sid_views=["text"]))
    assert not list(tiny_dataset.glob("tiny/sid-*"))


def test_interactions_whose_item_has_no_row_are_counted_in_log_json_and_report(tiny_dataset, caplog):
    """RecBole drops the interactions of items that have no .item row; a semantic-ID run reads
    the pre-stage's folder, and must say so too."""
    from conftest import write_codes
    from recbole_macrec.quick_start import run_recbole

    item_file = tiny_dataset / "tiny" / "tiny.item"
    lines = item_file.read_text().splitlines()
    kept = [line for line in lines if not line.startswith(("i3\t", "i7\t"))]
    item_file.write_text("\n".join(kept) + "\n")
    inter = (tiny_dataset / "tiny" / "tiny.inter").read_text().splitlines()[1:]
    absent = sum(line.split("\t")[1] in ("i3", "i7") for line in inter)
    assert absent > 0
    write_codes(tiny_dataset / "tiny")
    for view in ("text", "image"):   # codes only for the items that have a row
        path = tiny_dataset / "tiny" / f"tiny.{view}.codes.json"
        path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k not in ("i3", "i7")}))
    result = run_recbole("TIGER", "tiny", config_dict=tiny_config_dict(tiny_dataset, **TINY_T5))
    saved = json.loads(open(result["result_file"]).read())
    assert saved["dropped_interactions"]["item_has_no_row"] == absent
    assert saved["dropped_interactions"]["interactions"] == len(inter)
    report = json.loads(open(os.path.join(saved["semantic_ids"]["folder"], "sid_report.json")).read())
    assert report["dropped_interactions"]["item_has_no_row"] == absent
    assert f"{absent} left out because their item has no row" in caplog.text


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


def test_semantic_id_folder_and_results_have_the_usual_permissions(tiny_dataset):
    from conftest import write_codes
    from recbole_macrec.quick_start import run_recbole

    write_codes(tiny_dataset / "tiny")
    old = os.umask(0o022)
    try:
        result = run_recbole("TIGER", "tiny", config_dict=tiny_config_dict(tiny_dataset, **TINY_T5))
    finally:
        os.umask(old)
    folder = json.loads(open(result["result_file"]).read())["semantic_ids"]["folder"]
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o755
    for path in [*map(lambda n: os.path.join(folder, n), os.listdir(folder)), result["result_file"]]:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o644, path


def test_cpu_processes_share_the_cores_unless_the_user_set_threads(monkeypatch):
    import torch

    from recbole_macrec.config import share_cores

    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        said = share_cores(2)
        assert torch.get_num_threads() == max(1, (os.cpu_count() or 1) // 2)
        assert "shared by 2 processes" in said
        torch.set_num_threads(before)
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert "as set" in share_cores(2) and torch.get_num_threads() == before
    finally:
        torch.set_num_threads(before)
