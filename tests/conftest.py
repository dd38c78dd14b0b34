import os
import sys
from pathlib import Path

import numpy as np
import pytest

import recbole_macrec  # noqa: F401  (compat shims)

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))


@pytest.fixture(autouse=True)
def clean_argv(monkeypatch):
    """RecBole's Config reads --key=value from sys.argv: never let pytest's own flags leak in."""
    monkeypatch.setattr(sys, "argv", ["pytest"])


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Run in a temporary folder: RecBole writes log/, saved/ and dataset/ into the cwd."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


GENRES = ["rock", "jazz", "folk", "pop", "metal", "blues"]


def make_tiny_dataset(root, name="tiny", n_users=40, n_items=30, seed=0, min_len=5, max_len=10):
    """A RecBole dataset with structure a model can learn: users walk item ids upward."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    t = 0
    for u in range(n_users):
        length = int(rng.integers(min_len, max_len + 1))
        start = int(rng.integers(0, n_items))
        for k in range(length):
            item = (start + k) % n_items
            lines.append(f"u{u}\ti{item}\t{t}")
            t += 1
    (folder / f"{name}.inter").write_text("\n".join(lines) + "\n")
    item_lines = ["item_id:token\ttitle:token_seq\tclass:token_seq"]
    for i in range(n_items):
        item_lines.append(f"i{i}\titem number {i} {GENRES[i % len(GENRES)]}\t{GENRES[i % len(GENRES)]}")
    (folder / f"{name}.item").write_text("\n".join(item_lines) + "\n")
    return folder


def tiny_config_dict(data_path, **extra):
    cfg = {
        "data_path": str(data_path),
        "load_col": {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id", "title", "class"]},
        "epochs": 1,
        "eval_step": 1,
        "train_batch_size": 64,
        "show_progress": False,
        "state": "WARNING",
        "use_gpu": False,
        "checkpoint_dir": "saved",
        "log_wandb": False,
    }
    cfg.update(extra)
    return cfg


@pytest.fixture
def tiny_dataset(workdir):
    make_tiny_dataset(workdir / "data")
    return workdir / "data"


def instruments_src():
    path = SHARED_DATA / "Instruments"
    if not (path / "Instruments.inter.json").is_file():
        pytest.skip("../shared/data/Instruments is not present")
    return path
