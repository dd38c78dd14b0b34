"""LC-Rec (Zheng et al., ICDE 2024) as a baseline: a decoder-only language model whose vocabulary
gains the semantic-ID tokens, trained on seqrec plus item <-> ID alignment tasks.

By default the LM is small (Llama architecture from ``LlamaConfig``) and trained from scratch
with a word-level vocabulary built from the dataset's item text; the original fine-tunes
LLaMA-7B. With ``pretrained_path`` a local checkpoint and its tokenizer are loaded (never a hub
download); the code and task tokens are appended after its vocabulary (base ids unchanged), and
``lora_r > 0`` trains LoRA adapters through peft. Semantic IDs come from the ``rqvae_sinkhorn``
pre-stage (Sinkhorn-balanced last level, LC-Rec's uniform semantic mapping).

Sequences: ``[task] source [sep] target [eos]``; the loss covers the target tokens only.
Decoding: the prompt (left-padded) is encoded once, then the shared constrained beam search runs
the decoder with its KV cache.
"""
import os
import re
from collections import Counter
from logging import getLogger

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType

from recbole_macrec.data.device_loader import TASK_FIELD
from recbole_macrec.errors import SettingError
from recbole_macrec.model.beam_search import CodeTrie, cached_forward, constrained_beam_search, scores_to_matrix
from recbole_macrec.model.generative import SemanticIdModelMixin, row_token_mean, stack_rows, task_mix_setting
from recbole_macrec.model.packing import IGNORE, pad_cat, segment_token_means
from recbole_macrec.model.vocab import SemanticIdVocab
from recbole_macrec.trainer.generative_trainer import GenerativeTrainer

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


def left_pad(ids, mask):
    """Move each right-padded row ``[B, S]`` to the right end (padding first), as causal
    decoding of a batch needs."""
    S = ids.shape[1]
    shift = mask.sum(1, keepdim=True)
    index = (torch.arange(S, device=ids.device)[None, :] + shift) % S
    return ids.gather(1, index), mask.gather(1, index)


def concat_prompt_target(prompt, prompt_mask, target, target_mask, pad_id):
    """``[B, P + T]`` rows ``prompt target padding`` (target right after each row's prompt), the
    attention mask and labels (``-100`` everywhere except the target's tokens)."""
    B, P = prompt.shape
    T = target.shape[1]
    full = torch.cat([prompt, prompt.new_full((B, T), pad_id)], 1)
    full = full.masked_fill(~torch.cat([prompt_mask, prompt_mask.new_zeros(B, T)], 1), pad_id)
    p_len = prompt_mask.sum(1, keepdim=True)
    positions = torch.arange(T, device=prompt.device)[None, :] + p_len
    full.scatter_(1, positions, target.masked_fill(~target_mask, pad_id))
    labels = torch.full_like(full, IGNORE)
    labels.scatter_(1, positions, target.masked_fill(~target_mask, IGNORE))
    mask = torch.arange(P + T, device=prompt.device)[None, :] < p_len + target_mask.sum(1, keepdim=True)
    return full, mask, labels


class LCRec(SemanticIdModelMixin, SequentialRecommender):
    input_type = InputType.POINTWISE
    trainer_class = GenerativeTrainer

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        logger = getLogger()
        self.view = list(config["gr_views"] or config["sid_views"])[0]
        type(self).check_settings(config)
        self.beam_size = int(config["beam_size"])
        texts = self.item_texts(dataset, config["lcrec_text_fields"] or config["text_view_fields"] or [])
        self.tasks = [t for t in (config["gr_tasks"] or LCREC_TASKS) if t in LCREC_TASKS]
        if texts is None:
            self.tasks = ["seqrec"]
            logger.warning("LCRec: the dataset has no item text: training seqrec only "
                           "(no item <-> ID alignment tasks)")
        self.mixture_tasks = self.tasks
        self.task_mix = task_mix_setting(config)
        self.text_len = int(config["lcrec_text_len"] or 16)
        self.pack_tasks = config["gr_pack_tasks"] is not False
        self.pretrained_path = config["pretrained_path"]
        self.lora_r = int(config["lora_r"] or 0)
        if self.pretrained_path:
            self.lm, base_size, self.pad_id, self.eos_id, encode = self._load_pretrained(config)
            self.sep_id = self.eos_id
        else:
            words = WordVocab(texts or [], int(config["lcrec_word_vocab_size"] or 5000))
            base_size, encode = len(words), words.encode
            self.pad_id, self.eos_id, self.sep_id = WordVocab.PAD, WordVocab.EOS, WordVocab.SEP
        codes = self.load_code_tables(dataset, [self.view])
        self.vocab = SemanticIdVocab(codes, LCREC_TASKS, first_id=base_size)
        self.register_buffer("_tokens", self.vocab.item_token_table(self.view), persistent=False)
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
                max_position_embeddings=config["max_position_embeddings"] or 512,
                pad_token_id=self.pad_id, bos_token_id=self.eos_id, eos_token_id=self.eos_id,
                tie_word_embeddings=True))
        self._trie = None

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
        table = torch.full((len(self._tokens), self.text_len), self.pad_id, dtype=torch.long)
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
            lora_dropout=float(config["lora_dropout"] or 0.0),
            target_modules=list(config["lora_target_modules"] or ["q_proj", "v_proj"]),
            modules_to_save=["embed_tokens", "lm_head"], task_type="CAUSAL_LM"))

    # ---- sequences -------------------------------------------------------------------------
    def _wrap(self, task, body, body_mask):
        """``[task] body [sep]`` right-padded, from a right-padded ``body [B, S]``."""
        B = body.shape[0]
        ids = torch.cat([body.new_full((B, 1), self.vocab.task_ids[task]), body, body.new_full((B, 1), self.pad_id)], 1)
        mask = torch.cat([body_mask.new_ones(B, 1), body_mask, body_mask.new_zeros(B, 1)], 1)
        end = mask.sum(1, keepdim=True)
        ids.scatter_(1, end, self.sep_id)
        mask.scatter_(1, end, True)
        return ids.masked_fill(~mask, self.pad_id), mask

    def history_prompt(self, item_seq, item_len):
        """``[task seqrec] codes of the history [sep]`` ``[B, P]`` right-padded, and its mask."""
        B, T = item_seq.shape
        L = self.vocab.num_levels(self.view)
        body = self._tokens[item_seq].view(B, T * L)
        body_mask = torch.arange(T * L, device=body.device)[None, :] < (item_len * L)[:, None]
        ids, mask = self._wrap("seqrec", body, body_mask)
        width = 2 + int(item_len.max()) * L
        return ids[:, :width], mask[:, :width]

    def code_target(self, items):
        tok = self._tokens[items]
        ids = torch.cat([tok, tok.new_full((tok.shape[0], 1), self.eos_id)], 1)
        return ids, torch.ones_like(ids, dtype=torch.bool)

    def text_of(self, items):
        text = self._text[items]
        return text, text.ne(self.pad_id)

    def task_sequences(self, task, interaction):
        """``(ids, mask, labels)`` of ``task`` for a RecBole batch."""
        items = interaction[self.POS_ITEM_ID]
        if task == "seqrec":
            prompt, pmask = self.history_prompt(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
            target, tmask = self.code_target(items)
        elif task == "text2id":
            prompt, pmask = self._wrap(task, *self.text_of(items))
            target, tmask = self.code_target(items)
        elif task == "id2text":
            prompt, pmask = self._wrap(task, self._tokens[items], torch.ones_like(self._tokens[items], dtype=torch.bool))
            text, text_mask = self.text_of(items)
            target = torch.cat([text, text.new_full((text.shape[0], 1), self.pad_id)], 1)
            tmask = torch.cat([text_mask, text_mask.new_zeros(text.shape[0], 1)], 1)
            target.scatter_(1, text_mask.sum(1, keepdim=True), self.eos_id)
            tmask.scatter_(1, text_mask.sum(1, keepdim=True), True)
        else:
            raise SettingError(f"unknown LCRec task '{task}'")
        return concat_prompt_target(prompt, pmask, target, tmask, self.pad_id)

    def target_token_losses(self, ids, mask, labels):
        """Cross-entropy ``[N, S - 1]`` of each next token that has a label (0 elsewhere). The LM
        head runs on labelled positions only: with a from-scratch model the vocabulary projection
        is most of the compute, and most positions are prompt."""
        hidden = self.lm.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1]
        target = labels[:, 1:]
        labelled = target.ne(IGNORE)
        logits = self.lm.get_output_embeddings()(hidden[labelled])
        token_loss = hidden.new_zeros(target.shape, dtype=torch.float)
        token_loss[labelled] = F.cross_entropy(logits.float(), target[labelled], reduction="none")
        return token_loss, labelled

    def task_kind(self, task):
        return TASK_KINDS[task]

    def calculate_loss(self, interaction):
        """A mixture step (``gr_task_mix: released``): the mean cross-entropy of all its target
        tokens, row ``r`` built as task ``tasks[interaction[TASK_FIELD][r]]``. Else the sum over
        tasks of the mean cross-entropy of the task's target tokens; all tasks in one forward pass
        when ``gr_pack_tasks`` (rows right-padded to a common width)."""
        if TASK_FIELD in interaction:
            task = interaction[TASK_FIELD]
            seqs = [self.task_sequences(t, interaction) for t in self.tasks]
            ids = stack_rows([s[0] for s in seqs], task, self.pad_id)
            mask = stack_rows([s[1].long() for s in seqs], task, 0)
            labels = stack_rows([s[2] for s in seqs], task, IGNORE)
            token_loss, labelled = self.target_token_losses(ids, mask, labels)
            return row_token_mean(token_loss, labelled, torch.ones_like(task, dtype=token_loss.dtype))
        groups = [self.tasks] if self.pack_tasks else [[task] for task in self.tasks]
        total = 0
        for group in groups:
            seqs = [self.task_sequences(task, interaction) for task in group]
            ids = pad_cat([s[0] for s in seqs], self.pad_id)
            mask = pad_cat([s[1].long() for s in seqs], 0)
            labels = pad_cat([s[2] for s in seqs], IGNORE)
            token_loss, labelled = self.target_token_losses(ids, mask, labels)
            total = total + segment_token_means(token_loss, labelled, [len(s[0]) for s in seqs]).sum()
        return total

    # ---- scoring and decoding --------------------------------------------------------------
    def trie(self):
        if self._trie is None:
            self._trie = CodeTrie.for_view(self.vocab, self.view, self._tokens.device)
        return self._trie

    def teacher_forced_scores(self, interaction, items):
        """Mean log-probability ``[B]`` of ``items [B]``' L code tokens and the eos after them,
        after each row's prompt (the quantity beam search ranks by)."""
        prompt, pmask = self.history_prompt(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        ids, mask, labels = concat_prompt_target(prompt, pmask, *self.code_target(items), self.pad_id)
        logp = torch.log_softmax(self.lm(input_ids=ids, attention_mask=mask).logits[:, :-1].float(), -1)
        target = labels[:, 1:]
        picked = logp.gather(2, target.clamp_min(0)[..., None])[..., 0]
        labelled = target != IGNORE
        return (picked * labelled).sum(1) / labelled.sum(1)

    def beam_search(self, interaction):
        prompt, pmask = self.history_prompt(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        ids, mask = left_pad(prompt, pmask)
        B, K = ids.shape[0], self.beam_size
        state = {"mask": mask.long(), "pos": (mask.long().cumsum(1) - 1).clamp_min(0), "cache": None}

        def step(tokens, reorder):
            if tokens is None:
                out, state["cache"] = cached_forward(self.lm, None, input_ids=ids, attention_mask=state["mask"],
                                                     position_ids=state["pos"])
            else:
                state["cache"].reorder_cache(reorder)
                state["mask"] = torch.cat([state["mask"][reorder], state["mask"].new_ones(len(reorder), 1)], 1)
                pos = state["pos"][reorder][:, -1:] + 1
                state["pos"] = torch.cat([state["pos"][reorder], pos], 1)
                out, state["cache"] = cached_forward(self.lm, state["cache"], input_ids=tokens,
                                                     attention_mask=state["mask"], position_ids=pos)
            return torch.log_softmax(out.logits[:, -1].float(), dim=-1)

        return constrained_beam_search(step, B, self.trie(), K, self.eos_id)

    @torch.no_grad()
    def full_sort_predict(self, interaction):
        items, scores = self.beam_search(interaction)
        return scores_to_matrix(items, scores, self.n_items)

    def predict(self, interaction):
        return self.teacher_forced_scores(interaction, interaction[self.ITEM_ID])
