"""Atomic writes: two writers never share a temporary file, what killed runs leave is removed, and
every file and folder written gets the usual permissions."""
import json
import os
import stat
import subprocess
import sys

from conftest import TINY_T5, tiny_config_dict, write_codes


def test_two_writers_of_one_file_never_share_a_temp_file_and_stale_temps_are_removed(tmp_path):
    from recbole_macrec.files import atomic_path, remove_stale_temps, temp_prefix

    target = tmp_path / "x.json"
    with atomic_path(target) as a, atomic_path(target) as b:
        assert a != b
        open(a, "w").write("a")
        open(b, "w").write("b")
    assert target.read_text() in ("a", "b") and not [p for p in os.listdir(tmp_path) if p != "x.json"]
    # a process that is gone left a temp file and folder; a live one's stay
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    (tmp_path / f".x.json.pid{pid}-abc.tmp").write_text("half")
    (tmp_path / f".sid-rqvae.pid{pid}-def").mkdir()
    live = tmp_path / f"{temp_prefix('y.json')}ghi.tmp"
    live.write_text("mine")
    assert sorted(remove_stale_temps(str(tmp_path))) == sorted([f".x.json.pid{pid}-abc.tmp", f".sid-rqvae.pid{pid}-def"])
    assert live.exists()


def test_semantic_id_folder_and_results_have_the_usual_permissions(tiny_dataset):
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
