"""The CPU training levers keep what is trained: the lean T5 forward is transformers' function,
the cheap dropout masks are Bernoulli(1 - p) and reproducible from the seed, bf16 autocast keeps
the loss within bf16 rounding; and the benchmark runs as documented."""
import math

import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration

from conftest import build_model, training_batch, write_codes
from recbole_macrec.model import t5_training
from recbole_macrec.model.dropout_mask import dropout, keep_mask, keep_threshold


def _tiny_t5(dropout_rate=0.0, feed_forward_proj="relu"):
    torch.manual_seed(0)
    return T5ForConditionalGeneration(T5Config(
        vocab_size=40, d_model=16, d_kv=8, d_ff=32, num_layers=2, num_decoder_layers=2, num_heads=2,
        dropout_rate=dropout_rate, feed_forward_proj=feed_forward_proj, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0))


def _inputs():
    torch.manual_seed(1)
    src = torch.randint(2, 40, (5, 9))
    src[1, 4:] = 0
    src[3, 2:] = 0
    return src, src.ne(0), torch.randint(2, 40, (5, 4))


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_lean_forward_is_transformers_t5_function_logits_and_gradients(mode):
    """Dropout off (train mode included): the same logits and the same gradient for every
    parameter, to float rounding."""
    t5 = _tiny_t5()
    getattr(t5, mode)()
    src, mask, dec = _inputs()
    grads = []
    for forward in ("transformers", "lean"):
        t5.zero_grad()
        if forward == "lean":
            logits = t5_training.t5_logits(t5, src, mask, dec)
        else:
            logits = t5(input_ids=src, attention_mask=mask, decoder_input_ids=dec).logits
        (logits.square().mean() + logits[:, -1].mean()).backward()
        grads.append((logits.detach(), {n: p.grad.clone() for n, p in t5.named_parameters() if p.grad is not None}))
    (hf, hf_grads), (lean, lean_grads) = grads
    torch.testing.assert_close(lean, hf, rtol=1e-5, atol=1e-5)
    assert hf_grads.keys() == lean_grads.keys()
    for name in hf_grads:
        torch.testing.assert_close(lean_grads[name], hf_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    encoded = t5_training.encoder_states(t5, src, mask)
    torch.testing.assert_close(encoded, t5.encoder(input_ids=src, attention_mask=mask).last_hidden_state,
                               rtol=1e-5, atol=1e-5)


def test_lean_forward_applies_dropout_at_transformers_sites():
    """With dropout on, the lean forward drops at every site transformers does: with the
    dropout function replaced by torch's, the same RNG stream gives the same logits."""
    import torch.nn.functional as F

    t5 = _tiny_t5(dropout_rate=0.3).train()
    src, mask, dec = _inputs()
    for attention in (m for m in t5.modules() if type(m).__name__ == "T5Attention"):
        attention.config._attn_implementation = "eager"
    torch.manual_seed(5)
    hf = t5(input_ids=src, attention_mask=mask, decoder_input_ids=dec).logits
    torch.manual_seed(5)
    lean = t5_training.t5_logits(t5, src, mask, dec, drop=F.dropout)
    torch.testing.assert_close(lean, hf, rtol=1e-5, atol=1e-5)


def test_only_relu_t5s_are_computed_lean():
    assert t5_training.supports(_tiny_t5())
    assert not t5_training.supports(_tiny_t5(feed_forward_proj="gated-gelu"))


@pytest.mark.parametrize("p", [0.1, 0.5, 0.03])
def test_cheap_masks_keep_elements_with_probability_one_minus_p(p):
    torch.manual_seed(0)
    n = 2_000_003   # odd: the last 64-bit draw is half used
    kept = keep_mask((n,), p).double().mean().item()
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(kept - (1 - p)) < 5 * sigma
    assert abs((2 ** 31 - keep_threshold(p)) / 2 ** 32 - (1 - p)) < 2.4e-10   # the rate itself
    # and the two halves of each 64-bit draw are independent: pairs kept together at (1-p)^2
    pairs = keep_mask((n // 2, 2), p)
    both = (pairs[:, 0] & pairs[:, 1]).double().mean().item()
    assert abs(both - (1 - p) ** 2) < 5 * math.sqrt((1 - p) ** 2 * (1 - (1 - p) ** 2) / (n // 2))


def test_cheap_masks_are_reproducible_from_the_seed_and_scale_as_torch():
    x = torch.randn(64, 33, requires_grad=True)
    torch.manual_seed(3)
    a = dropout(x, 0.2)
    torch.manual_seed(3)
    b = dropout(x, 0.2)
    torch.manual_seed(4)
    c = dropout(x, 0.2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    kept = a.ne(0)
    torch.testing.assert_close(a[kept], x[kept] / 0.8)
    a.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / 0.8)
    assert dropout(x, 0.2, training=False) is x and dropout(x, 0.0) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))


def test_fast_training_step_equals_the_transformers_step_without_dropout(tiny_dataset):
    """The model's own switch: with dropout off, ten training steps through the lean forward end
    at the weights ten steps through transformers' forward reach (float rounding)."""
    from recbole_macrec.trainer.generative_trainer import GenerativeTrainer

    write_codes(tiny_dataset / "tiny")
    weights = {}
    for fast in (False, True):
        model, config, data = build_model("MACRec", tiny_dataset, gr_fast_train=fast, train_batch_size=16)
        trainer = GenerativeTrainer(config, model)
        model.train()
        for step, batch in zip(range(10), trainer.batches_of(data[0])):
            trainer.train_step(batch)
        weights[fast] = torch.cat([p.detach().flatten() for p in model.parameters()])
    torch.testing.assert_close(weights[True], weights[False], rtol=1e-4, atol=1e-5)


def test_bf16_autocast_keeps_the_loss_within_bf16_rounding(tiny_dataset):
    """bf16 has an 8-bit mantissa (relative rounding 2^-8 = 0.4% per product): the step's loss
    stays within 1% of fp32's, the tolerance of the existing bf16 test."""
    write_codes(tiny_dataset / "tiny")
    model, config, data = build_model("MACRec", tiny_dataset)
    batch = training_batch(model, config, data)
    model.train()
    model.t5.config.dropout_rate = 0.0
    fp32 = float(model.calculate_loss(batch))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = float(model.calculate_loss(batch))
    assert bf16 == pytest.approx(fp32, rel=1e-2) and bf16 != fp32
