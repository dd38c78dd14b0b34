import sys
from pathlib import Path

import numpy as np
import pytest

import recbole_macrec  # noqa: F401  (compat shims)

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"


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
        "gr_grad_accum": 1,
        "gr_bf16": False,   # fp32 on every machine (bf16 autocast trains on CPUs with native bf16)
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


def write_codes(folder, name="tiny", n_items=30):
    """Hand-made unique 3-level codes for views 'text' and 'image' (import method)."""
    import json

    text = {f"i{i}": [i // 9, (i // 3) % 3, i % 3] for i in range(n_items)}
    image = {f"i{i}": [(7 * i) % 5, (i // 5) % 3, i % 2] for i in range(n_items)}
    assert len({tuple(v) for v in image.values()}) == n_items
    (Path(folder) / f"{name}.text.codes.json").write_text(json.dumps(text))
    (Path(folder) / f"{name}.image.codes.json").write_text(json.dumps(image))
    return text, image


TINY_T5 = dict(d_model=16, d_kv=8, d_ff=32, num_layers=1, num_decoder_layers=1, num_heads=2,
               dropout_rate=0.0, train_batch_size=32, eval_batch_size=16, learning_rate=0.005,
               sid_method="import", sid_views=["text", "image"])


def build_model(model_name, data_path, **extra):
    """A generative model on the tiny dataset (codes imported) and its RecBole data splits."""
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed

    from recbole_macrec.config import Config
    from recbole_macrec.model.semantic_id_recommender import model_views
    from recbole_macrec.registry import get_model
    from recbole_macrec.semantic_ids import semantic_id_dataset

    model_class = get_model(model_name)
    config = Config(model=model_class, dataset="tiny",
                    config_dict=tiny_config_dict(data_path, **{**TINY_T5, **extra}))
    init_seed(config["seed"], True)
    semantic_ids = semantic_id_dataset(config, model_views(config))
    config["data_path"], config["load_col"] = semantic_ids.data_path, semantic_ids.load_col
    train, valid, test = data_preparation(config, create_dataset(config))
    init_seed(config["seed"], True)
    return model_class(config, train._dataset), config, (train, valid, test)


def training_batch(model, config, data):
    """The first batch the generative trainer trains ``model`` on (a task-mixture batch under
    ``gr_task_mix: released``, RecBole's under ``per_batch``)."""
    from recbole_macrec.trainer.generative_trainer import GenerativeTrainer

    return next(iter(GenerativeTrainer(config, model).batches_of(data[0])))


def assert_training_lowers_loss(model, batch, steps=15, factor=0.8):
    """A few optimiser steps on one batch must lower the model's loss clearly."""
    import torch

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    first = float(model.calculate_loss(batch))
    for _ in range(steps):
        optimizer.zero_grad()
        model.calculate_loss(batch).backward()
        optimizer.step()
    assert float(model.calculate_loss(batch)) < first * factor


def without_cache_deprecation(fn, *args):
    """``fn(*args)``, failing if transformers warns that the KV-cache argument's name is deprecated
    (``past_key_values`` is removed in transformers 5.40)."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn(*args)
    deprecated = [str(w.message) for w in caught if "past_key_values" in str(w.message)]
    assert not deprecated, deprecated
    return out


def tiny_text_encoder(path):
    """A randomly initialised BERT and a word-level tokenizer saved with ``save_pretrained``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    words = ["[PAD]", "[UNK]", "guitar", "model", "a", "fine", "item", "number", "rock", "jazz", "folk",
             "pop", "metal", "blues"] + [str(i) for i in range(10)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]").save_pretrained(path)
    BertModel(BertConfig(vocab_size=len(words), hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=16)).save_pretrained(path)
    return path
