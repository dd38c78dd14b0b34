"""Item text -> embeddings with a local pretrained encoder (a transformers folder saved with
``save_pretrained``; never a hub download): per text field the mean-pooled last hidden state
(padding excluded), then the mean over fields. Used by the computed ``text`` item view
(``text_encoder``) and by ``dataset_prep/amazon2018.py``.
"""
import os

import numpy as np

from recbole_macrec.errors import DataError
from recbole_macrec.files import file_digest

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class TextEncoderError(DataError):
    """A text encoder folder that cannot be used: the message names the folder or file."""


def weights_file(path):
    """The encoder's weights file in folder ``path``."""
    if not os.path.isdir(path):
        raise TextEncoderError(f"text encoder folder not found: {path} (a local folder saved with "
                               f"save_pretrained; hub ids are not downloaded)")
    for name in WEIGHT_FILES:
        if os.path.isfile(os.path.join(path, name)):
            return os.path.join(path, name)
    raise TextEncoderError(f"text encoder folder {path} has no weights ({' or '.join(WEIGHT_FILES)})")


def check_encoder(path, sha256=None):
    """The weights file of the encoder in ``path``, verified against ``sha256`` when given."""
    weights = weights_file(path)
    if sha256 is not None:
        actual = file_digest(weights)
        if actual != str(sha256).lower():
            raise TextEncoderError(f"{weights}: sha256 {actual} does not match text_encoder_sha256 {sha256}")
    return weights


class TextEncoder:
    """A local encoder and its tokenizer; ``embed(rows)`` -> ``[n, d]`` float32."""

    def __init__(self, path, device="cpu", sha256=None, max_length=256):
        from transformers import AutoModel, AutoTokenizer

        check_encoder(path, sha256)
        self.device, self.max_length = device, max_length
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).to(device).eval()

    def embed(self, rows):
        """``rows``: per item a list of field texts (all rows the same fields). Per field the
        mean-pooled last hidden state, then the mean over fields: ``[len(rows), d]``."""
        import torch

        per_field = []
        for field in range(len(rows[0])):
            texts = [row[field] or " " for row in rows]
            enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt").to(self.device)
            with torch.no_grad():
                hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"][..., None].to(hidden.dtype)
            per_field.append((hidden * mask).sum(1) / mask.sum(1).clamp_min(1))
        return torch.stack(per_field).mean(0).float().cpu().numpy()

    def embed_all(self, rows, batch_size=64, progress=False):
        """``embed`` over ``rows`` in batches, with a progress bar when asked."""
        from tqdm import tqdm

        out = [self.embed(rows[start:start + batch_size])
               for start in tqdm(range(0, len(rows), batch_size), desc="text encoder", ncols=100,
                                 disable=not progress)]
        return np.concatenate(out).astype(np.float32)
