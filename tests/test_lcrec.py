import pytest
import torch

from conftest import (
    assert_training_lowers_loss,
    build_model,
    tiny_config_dict,
    training_batch,
    without_cache_deprecation,
    write_codes,
)
from recbole_macrec.model.decoder_only import concat_prompt_target, left_pad
from recbole_macrec.model.lcrec import WordVocab
from recbole_macrec.model.packing import IGNORE

TINY_LM = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
               num_key_value_heads=2, text_view_fields=["title", "class"], gr_views=["text"])


@pytest.fixture
def lcrec(tiny_dataset):
    write_codes(tiny_dataset / "tiny")
    model, config, data = build_model("LCRec", tiny_dataset, **TINY_LM)
    model.eval()
    return model, config, data


def test_left_pad_and_concat():
    ids = torch.tensor([[5, 6, 7, 0], [8, 0, 0, 0]])
    mask = ids.ne(0)
    left, lmask = left_pad(ids, mask)
    assert left.tolist() == [[0, 5, 6, 7], [0, 0, 0, 8]] and lmask.tolist()[1] == [False] * 3 + [True]
    target = torch.tensor([[1, 2], [3, 4]])
    full, fmask, labels = concat_prompt_target(ids, mask, target, torch.ones_like(target, dtype=torch.bool), 0)
    assert full.tolist() == [[5, 6, 7, 1, 2, 0], [8, 3, 4, 0, 0, 0]]
    assert labels.tolist() == [[IGNORE] * 3 + [1, 2, IGNORE], [IGNORE, 3, 4] + [IGNORE] * 3]
    assert fmask.sum(1).tolist() == [5, 3]


def test_vocabulary_extends_the_word_vocabulary(lcrec):
    model, _, _ = lcrec
    words = WordVocab(["item number 1 rock"])
    assert words.encode("Rock number 9") == [words.ids["rock"], words.ids["number"], WordVocab.UNK]
    first_code = min(model.vocab.level_offsets["text"])
    assert min(model.vocab.task_ids.values()) > max(model._text.max().item(), WordVocab.UNK)
    assert first_code > max(model.vocab.task_ids.values())
    assert model.lm.config.vocab_size == model.vocab.size


def test_task_rows_on_hand_built_batch(lcrec):
    from recbole.data.interaction import Interaction

    model, _, _ = lcrec
    batch = Interaction({"item_id_list": torch.tensor([[3, 5, 0], [7, 0, 0]]),
                         "item_length": torch.tensor([2, 1]), "item_id": torch.tensor([9, 4])})
    T = lambda i: model.item_tokens("text", torch.tensor(i)).tolist()
    task, sep, eos = model.vocab.task_ids, model.sep_id, model.eos_id
    ids, mask, labels = model.task_rows("seqrec", batch)
    prompt = [task["seqrec"], *T(3), *T(5), sep]
    assert ids[0, : int(mask[0].sum())].tolist() == prompt + T(9) + [eos]
    assert labels[0].tolist() == [IGNORE] * len(prompt) + T(9) + [eos] + [IGNORE] * (ids.shape[1] - len(prompt) - 4)
    row1 = [task["seqrec"], *T(7), sep] + T(4) + [eos]
    assert ids[1, : int(mask[1].sum())].tolist() == row1 and not mask[1, len(row1):].any()
    text9 = [t for t in model._text[9].tolist() if t != model.pad_id]
    assert text9, "tiny items have titles"
    ids, mask, labels = model.task_rows("text2id", batch)
    assert ids[0, : int(mask[0].sum())].tolist() == [task["text2id"], *text9, sep] + T(9) + [eos]
    ids, mask, labels = model.task_rows("id2text", batch)
    assert ids[0, : int(mask[0].sum())].tolist() == [task["id2text"], *T(9), sep] + text9 + [eos]
    assert [t for t in labels[0].tolist() if t != IGNORE] == text9 + [eos]


def test_loss_is_computed_on_target_tokens_only(lcrec):
    model, _, data = lcrec
    batch = next(iter(data[0]))
    model.task_mix = "per_batch"   # the loss of a RecBole batch
    model.set_tasks(["seqrec"])
    ids, mask, labels = model.task_rows("seqrec", batch)
    base = float(model.calculate_loss(batch))
    # the loss is the mean cross-entropy over exactly the labelled (target) positions
    logits = model.lm(input_ids=ids, attention_mask=mask).logits[:, :-1]
    manual = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1])[labels[:, 1:].reshape(-1) != IGNORE],
        labels[:, 1:].reshape(-1)[labels[:, 1:].reshape(-1) != IGNORE])
    assert base == pytest.approx(float(manual), rel=1e-5)
    assert int((labels != IGNORE).sum()) == len(batch) * (model.vocab.num_levels("text") + 1)


def _full_logits_task_loss(model, ids, mask, labels):
    logits = model.lm(input_ids=ids, attention_mask=mask).logits[:, :-1]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                             ignore_index=IGNORE)


def test_all_tasks_in_one_pass_equal_one_pass_per_task(lcrec):
    model, _, data = lcrec
    batch = next(iter(data[0]))
    model.task_mix = "per_batch"   # every task built from this RecBole batch
    assert model.tasks == ["seqrec", "text2id", "id2text"] and model.pack_tasks
    # the three tasks have different widths, so the packed rows are padded
    widths = {model.task_rows(t, batch)[0].shape[1] for t in model.tasks}
    assert len(widths) > 1
    reference = sum(float(_full_logits_task_loss(model, *model.task_rows(t, batch))) for t in model.tasks)
    assert float(model.calculate_loss(batch)) == pytest.approx(reference, rel=1e-5)
    model.pack_tasks = False
    assert float(model.calculate_loss(batch)) == pytest.approx(reference, rel=1e-5)


def _brute_force(model, batch):
    n = model.n_items
    return torch.stack([model.teacher_forced_scores(batch[torch.tensor([r] * (n - 1))], "text", torch.arange(1, n))
                        for r in range(len(batch))])


def test_decoder_only_beam_search_equals_brute_force(lcrec):
    model, _, data = lcrec
    batch = next(iter(data[2]))[0][torch.arange(6)]
    assert len(set(batch["item_length"].tolist())) > 1  # left padding is exercised
    model.beam_size = model.n_items
    with torch.no_grad():
        items, scores = without_cache_deprecation(model.beam_search, batch, "text")
        exact = _brute_force(model, batch)
    assert torch.equal(items[:, :30], exact.argsort(dim=1, descending=True) + 1)
    torch.testing.assert_close(scores[:, :30], exact.sort(dim=1, descending=True).values, atol=1e-5, rtol=0)


def test_without_item_text_only_seqrec_is_trained(tiny_dataset, caplog):
    write_codes(tiny_dataset / "tiny")
    model, _, _ = build_model("LCRec", tiny_dataset, **{**TINY_LM, "text_view_fields": ["no_such_field"]})
    assert model.tasks == ["seqrec"]


def test_local_checkpoint_loads_through_pretrained_path(tiny_dataset, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, "item": 3, "number": 4, "rock": 5, "jazz": 6}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=7, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=2, pad_token_id=0,
                                      eos_token_id=1, bos_token_id=1))
    ckpt = tmp_path / "tiny-llama"
    lm.save_pretrained(ckpt)
    tokenizer.save_pretrained(ckpt)
    write_codes(tiny_dataset / "tiny")
    model, config, data = build_model("LCRec", tiny_dataset, **TINY_LM, pretrained_path=str(ckpt))
    emb = model.lm.get_input_embeddings().weight
    assert emb.shape[0] == model.vocab.size and min(model.vocab.task_ids.values()) == 7
    torch.testing.assert_close(emb[:7], lm.get_input_embeddings().weight)
    assert model._text[1].tolist()[:2] == [3, 4]  # "item number ..." keeps the base ids
    assert model.label == "LCRec (tiny-llama)"
    assert_training_lowers_loss(model, training_batch(model, config, data))


def test_lcrec_runs_end_to_end(tiny_dataset):
    from recbole_macrec.quick_start import run_recbole

    cfg = tiny_config_dict(tiny_dataset, **{**TINY_LM, "sid_views": ["text"], "view_dim": 8,
                                            "sid_num_levels": 3, "sid_codebook_size": 4, "sid_e_dim": 8,
                                            "sid_encoder_layers": [16], "sid_epochs": 2, "sid_batch_size": 16,
                                            "sid_con_weights": [0, 0, 0], "sid_kmeans_iters": 10, "epochs": 1, "eval_batch_size": 16})
    result = run_recbole("LCRec", "tiny", config_dict=cfg)
    assert result["semantic_ids"]["method"] == "rqvae_sinkhorn"
    assert result["label"] == "LCRec (small LM from scratch)"
    assert 0 <= result["test_result"]["ndcg@10"] <= 1
