"""LC-Rec (Zheng et al., ICDE 2024) as a baseline: a decoder-only language model whose vocabulary
gains the semantic-ID tokens, trained on seqrec plus item <-> ID alignment tasks.

By default the LM is small (Llama architecture from ``LlamaConfig``) and trained from scratch
with a word-level vocabulary built from the dataset's item text; the original fine-tunes
LLaMA-7B. With ``pretrained_path`` a local checkpoint and its tokenizer are loaded (never a hub
download); the code and task tokens are appended after its vocabulary (base ids unchanged), and
``lora_r > 0`` trains LoRA adapters through peft. Semantic IDs come from the ``rqvae_sinkhorn``
pre-stage (Sinkhorn-balanced last level, LC-Rec's uniform semantic mapping).

Sequences, losses and decoding: the decoder-only backbone (``decoder_only.py``).
"""
import os
import re
from collections import Counter
from logging import getLogger

import torch

from recbole_macrec.errors import SettingError
from recbole_macrec.model.decoder_only import DecoderOnlyRecommender, concat_prompt_target
from recbole_macrec.model.semantic_id_recommender import load_code_tables, model_views

LCREC_TASKS = ("seqrec", "text2id", "id2text")
TASK_KINDS = {"seqrec": "seq", "text2id": "item", "id2text": "item"}   # source: a history or one item
WORD = re.compile(r"[a-z0-9']+")


class WordVocab:
    """Word-level vocabulary for a from-scratch LM: 0 pad, 1 eos, 2 sep, 3 unk, then words."""
    PAD, EOS, SEP, UNK = 0, 1, 2, 3

    def __init__(self, texts, max_size=5000):
        counts = Counter(w for t in texts for w in WORD.findall(t.lower()))
        self.words = [w for w, _ in counts.most_common(max_size)]
        self.ids = {w: i + 4 for i, w in enumerate(self.words)}

    def __len__(self):
        return 4 + len(self.words)

    def encode(self, text):
        return [self.ids.get(w, self.UNK) for w in WORD.findall(text.lower())]


class LCRec(DecoderOnlyRecommender):
    """LC-Rec's tasks on one view: seqrec (history -> next item's ID), text2id (an item's text ->
    its ID) and id2text (an item's ID -> its text)."""

    @classmethod
    def check_settings(cls, config):
        super().check_settings(config)
        unknown = [t for t in config["gr_tasks"] or [] if t not in LCREC_TASKS]
        if unknown:
            raise SettingError(f"LCRec: unknown task(s) {unknown} in gr_tasks (known: {', '.join(LCREC_TASKS)})")

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.views = self.inference_views = model_views(config)[:1]
        self.view = self.views[0]
        texts = self.item_texts(dataset, config["lcrec_text_fields"] or config["text_view_fields"] or [])
        tasks = list(config["gr_tasks"])
        if texts is None:
            tasks = ["seqrec"]
            getLogger().warning("LCRec: the dataset has no item text: training seqrec only "
                                "(no item <-> ID alignment tasks)")
        self.set_tasks(tasks, config["gr_task_weights"])
        self.text_len = int(config["lcrec_text_len"])
        self.pretrained_path = config["pretrained_path"]
        self.lora_r = int(config["lora_r"])
        if self.pretrained_path:
            self.lm, base_size, self.pad_id, self.eos_id, encode = self._load_pretrained(config)
            self.sep_id = self.eos_id
        else:
            words = WordVocab(texts or [], int(config["lcrec_word_vocab_size"] or 5000))
            base_size, encode = len(words), words.encode
            self.pad_id, self.eos_id, self.sep_id = WordVocab.PAD, WordVocab.EOS, WordVocab.SEP
        self.set_vocab(load_code_tables(dataset, [self.view]), LCREC_TASKS, first_id=base_size)
        self.register_buffer("_text", self._text_table(texts, encode), persistent=False)
        if self.pretrained_path:
            self.lm.resize_token_embeddings(self.vocab.size)
            self._maybe_lora(config)
        else:
            from transformers import LlamaConfig, LlamaForCausalLM

            self.lm = LlamaForCausalLM(LlamaConfig(
                vocab_size=self.vocab.size, hidden_size=config["hidden_size"],
                intermediate_size=config["intermediate_size"], num_hidden_layers=config["num_hidden_layers"],
                num_attention_heads=config["num_attention_heads"],
                num_key_value_heads=config["num_key_value_heads"] or config["num_attention_heads"],
                max_position_embeddings=config["max_position_embeddings"],
                pad_token_id=self.pad_id, bos_token_id=self.eos_id, eos_token_id=self.eos_id,
                tie_word_embeddings=True))

    @property
    def label(self):
        """Leaderboard label that says which LM this is (the original fine-tunes LLaMA-7B)."""
        if not self.pretrained_path:
            return "LCRec (small LM from scratch)"
        lora = f", LoRA r={self.lora_r}" if self.lora_r else ""
        return f"LCRec ({os.path.basename(os.path.normpath(self.pretrained_path))}{lora})"

    # ---- item text -----------------------------------------------------------------------
    @staticmethod
    def item_texts(dataset, fields):
        """Item text by internal id (row 0 empty), joined over ``fields``; ``None`` without text."""
        feat = dataset.get_item_feature()
        fields = [f for f in fields if f in feat.interaction]
        if not fields:
            return None
        texts = [""] * dataset.item_num
        for field in fields:
            tokens = dataset.field2id_token[field]
            values = feat[field]
            values = values[:, None] if values.dim() == 1 else values
            for i, row in enumerate(values.tolist()):
                words = [str(tokens[t]) for t in row if t > 0]
                texts[i] = (texts[i] + " " + " ".join(words)).strip()
        return texts

    def _text_table(self, texts, encode):
        table = torch.full((self.n_items, self.text_len), self.pad_id, dtype=torch.long)
        for i, text in enumerate(texts or []):
            ids = encode(text)[: self.text_len]
            table[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return table

    def _load_pretrained(self, config):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = self.pretrained_path
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        lm = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
        eos = tokenizer.eos_token_id
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]
        getLogger().info(f"LCRec: loaded local checkpoint {path} ({len(tokenizer)} base tokens)")
        return lm, len(tokenizer), pad, eos, encode

    def _maybe_lora(self, config):
        if not config["lora_r"]:
            return
        from peft import LoraConfig, get_peft_model

        self.lm = get_peft_model(self.lm, LoraConfig(
            r=int(config["lora_r"]), lora_alpha=int(config["lora_alpha"] or 2 * config["lora_r"]),
            lora_dropout=float(config["lora_dropout"]),
            target_modules=list(config["lora_target_modules"]),
            modules_to_save=["embed_tokens", "lm_head"], task_type="CAUSAL_LM"))

    # ---- tasks -----------------------------------------------------------------------------
    def text_of(self, items):
        text = self._text[items]
        return text, text.ne(self.pad_id)

    def task_kind(self, task):
        return TASK_KINDS[task]

    def task_rows(self, task, interaction, max_len=None):
        """``(ids, mask, labels)`` ``[B, P + T]`` of ``task`` for a RecBole batch (``max_len`` is
        not needed: the prompt is cut to the batch's longest history)."""
        items = interaction[self.POS_ITEM_ID]
        if task == "seqrec":
            prompt, pmask = self.history_prompt(self.view, interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
            target, tmask = self.code_target(self.view, items)
        elif task == "text2id":
            prompt, pmask = self.wrap(task, *self.text_of(items))
            target, tmask = self.code_target(self.view, items)
        else:   # id2text
            codes = self.item_tokens(self.view, items)
            prompt, pmask = self.wrap(task, codes, torch.ones_like(codes, dtype=torch.bool))
            text, text_mask = self.text_of(items)
            target = torch.cat([text, text.new_full((text.shape[0], 1), self.pad_id)], 1)
            tmask = torch.cat([text_mask, text_mask.new_zeros(text.shape[0], 1)], 1)
            target.scatter_(1, text_mask.sum(1, keepdim=True), self.eos_id)
            tmask.scatter_(1, text_mask.sum(1, keepdim=True), True)
        ids, mask, labels = concat_prompt_target(prompt, pmask, target, tmask, self.pad_id)
        return ids, mask.long(), labels
