"""A non-editable install (``pip install .``) carries everything a run needs: the package finds its
yamls inside itself, and ``python -m recbole_macrec`` runs from a folder that is not the checkout."""
import json
import os
import shutil
import subprocess
import sys

from conftest import ROOT, make_tiny_dataset


def _install(target, scratch):
    """``pip install --no-deps`` of a copy of the package's sources into ``target``; returns it."""
    src = scratch / "src"
    shutil.copytree(ROOT / "recbole_macrec", src / "recbole_macrec",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(src)], check=True)
    return target


def test_a_non_editable_install_runs_from_another_folder(tmp_path):
    site = _install(tmp_path / "site", tmp_path)
    assert (site / "recbole_macrec" / "properties" / "model" / "SemanticIdRecommender.yaml").is_file()
    elsewhere = tmp_path / "elsewhere"
    make_tiny_dataset(elsewhere / "data")
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run([sys.executable, "-c", "import recbole_macrec; print(recbole_macrec.__file__)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(site)), where   # the installed copy, not the checkout
    settings = ["--data_path=data", "--epochs=1", "--show_progress=False", "--state=WARNING",
                "--use_gpu=False", "--results_dir=out", "--d_model=16", "--d_kv=8", "--d_ff=32",
                "--num_layers=1", "--num_decoder_layers=1", "--num_heads=2", "--train_batch_size=64",
                "--sid_views=[text]", "--text_view_fields=[title,class]", "--view_dim=8", "--sid_num_levels=2",
                "--sid_codebook_size=8", "--sid_e_dim=8", "--sid_encoder_layers=[16]", "--sid_epochs=2",
                "--sid_batch_size=16", "--sid_kmeans_iters=5", "--sid_con_weights=[0,0]",
                "--load_col={'inter': ['user_id', 'item_id', 'timestamp'], 'item': ['item_id', 'title', 'class']}"]
    run = subprocess.run([sys.executable, "-m", "recbole_macrec", "--model=TIGER", "--dataset=tiny", *settings],
                         cwd=elsewhere, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    [result] = [f for f in os.listdir(elsewhere / "out") if f.endswith(".json")]
    saved = json.loads((elsewhere / "out" / result).read_text())
    # values that only the package's yamls hold: the base yaml's, the backbone's and TIGER's own
    assert saved["settings"]["gr_task_mix"] == "released" and saved["settings"]["gr_tasks"] == ["seqrec"]
    assert saved["settings"]["feed_forward_proj"] == "relu" and saved["settings"]["sid_method"] == "rqvae"
    assert 0 <= saved["test_result"]["ndcg@10"] <= 1
