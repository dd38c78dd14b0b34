"""The training forward pass of transformers' T5 (``T5ForConditionalGeneration``, relu feed-forward),
computed from the same parameters with fewer and cheaper operations on the CPU: one matrix product
for the query, key and value projections, the relative position bias and padding mask added once
per stack, and dropout masks drawn as 32 random bits per element (:mod:`dropout_mask`) instead of
one Bernoulli draw per element. With dropout off it equals transformers' forward to float
rounding (a test checks logits and gradients); decoding keeps transformers' model.
"""
import math

import torch
import torch.nn.functional as F

from recbole_macrec.model.dropout_mask import dropout


def _rms_norm(x, norm):
    return norm.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon))


def _bucket(relative_position, bidirectional, num_buckets, max_distance):
    """transformers' ``T5Attention._relative_position_bucket``."""
    buckets = 0
    if bidirectional:
        num_buckets //= 2
        buckets = (relative_position > 0).long() * num_buckets
        relative_position = relative_position.abs()
    else:
        relative_position = -torch.clamp(relative_position, max=0)
    max_exact = num_buckets // 2
    is_small = relative_position < max_exact
    large = max_exact + (torch.log(relative_position.float() / max_exact) / math.log(max_distance / max_exact)
                         * (num_buckets - max_exact)).long()
    large = torch.clamp(large, max=num_buckets - 1)
    return buckets + torch.where(is_small, relative_position, large)


def position_bias(attention, query_length, key_length, device):
    """``[1, heads, q, k]`` relative position bias of the first layer's ``attention`` module."""
    context = torch.arange(query_length, device=device)[:, None]
    memory = torch.arange(key_length, device=device)[None, :]
    bucket = _bucket(memory - context, not attention.is_decoder, attention.relative_attention_num_buckets,
                     attention.relative_attention_max_distance)
    return attention.relative_attention_bias(bucket).permute(2, 0, 1).unsqueeze(0)


def _heads(x, heads):
    B, S, _ = x.shape
    return x.view(B, S, heads, -1).transpose(1, 2)


def _attend(q, k, v, bias, attention, p, training, drop):
    """Softmax attention of ``q [B, H, Sq, d]`` over ``k, v``, ``bias`` added to the scores (T5
    does not scale them), dropout on the weights, and the output projection."""
    weights = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) + bias, dim=-1)
    weights = drop(weights, p, training)
    out = torch.matmul(weights, v).transpose(1, 2)
    return out.reshape(out.shape[0], out.shape[1], -1) @ attention.o.weight.t()


def _self_attention(x, attention, bias, p, training, drop):
    qkv = x @ torch.cat([attention.q.weight, attention.k.weight, attention.v.weight]).t()
    q, k, v = (_heads(t, attention.n_heads) for t in qkv.chunk(3, dim=-1))
    return _attend(q, k, v, bias, attention, p, training, drop)


def _cross_attention(x, memory, attention, bias, p, training, drop):
    q = _heads(x @ attention.q.weight.t(), attention.n_heads)
    kv = memory @ torch.cat([attention.k.weight, attention.v.weight]).t()
    k, v = (_heads(t, attention.n_heads) for t in kv.chunk(2, dim=-1))
    return _attend(q, k, v, bias, attention, p, training, drop)


def _feed_forward(x, layer, p, training, drop):
    dense = layer.DenseReluDense
    h = drop(torch.relu(_rms_norm(x, layer.layer_norm) @ dense.wi.weight.t()), p, training)
    return x + drop(h @ dense.wo.weight.t(), p, training)


def _additive_mask(mask, dtype):
    """``[B, 1, 1, S]``: 0 where ``mask [B, S]`` is true, the dtype's minimum elsewhere."""
    return (~mask)[:, None, None, :].to(dtype) * torch.finfo(dtype).min


def _encode(t5, src, mask, p, training, drop):
    stack = t5.encoder
    x = drop(stack.embed_tokens(src), p, training)
    first = stack.block[0].layer[0].SelfAttention
    bias = position_bias(first, src.shape[1], src.shape[1], src.device) + _additive_mask(mask, x.dtype)
    for block in stack.block:
        attn, ff = block.layer
        x = x + drop(_self_attention(_rms_norm(x, attn.layer_norm), attn.SelfAttention, bias, p, training, drop),
                     p, training)
        x = _feed_forward(x, ff, p, training, drop)
    return drop(_rms_norm(x, stack.final_layer_norm), p, training)


def _decode(t5, decoder_input_ids, memory, memory_mask, p, training, drop):
    stack = t5.decoder
    T = decoder_input_ids.shape[1]
    x = drop(stack.embed_tokens(decoder_input_ids), p, training)
    first = stack.block[0].layer[0].SelfAttention
    future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
    self_bias = position_bias(first, T, T, x.device) + future.to(x.dtype) * torch.finfo(x.dtype).min
    cross_bias = _additive_mask(memory_mask, x.dtype)
    for block in stack.block:
        attn, cross, ff = block.layer
        x = x + drop(_self_attention(_rms_norm(x, attn.layer_norm), attn.SelfAttention, self_bias, p, training,
                                     drop), p, training)
        x = x + drop(_cross_attention(_rms_norm(x, cross.layer_norm), memory, cross.EncDecAttention, cross_bias,
                                      p, training, drop), p, training)
        x = _feed_forward(x, ff, p, training, drop)
    return drop(_rms_norm(x, stack.final_layer_norm), p, training)


def supports(t5):
    """True for the T5 this module computes: relu feed-forward, no gating."""
    return t5.config.feed_forward_proj == "relu" and not t5.config.is_gated_act


def encoder_states(t5, input_ids, attention_mask, drop=dropout):
    """``[B, S, d]``: the encoder's last hidden states (train or eval mode, as the module is);
    ``drop``: the dropout function (``dropout_mask.dropout``, or torch's ``F.dropout``)."""
    return _encode(t5, input_ids, attention_mask, t5.config.dropout_rate, t5.training, drop)


def t5_logits(t5, input_ids, attention_mask, decoder_input_ids, drop=dropout):
    """Logits ``[B, T, vocab]`` of ``t5`` (train or eval mode, as the module is) for a source
    ``input_ids [B, S]`` with ``attention_mask [B, S]`` and ``decoder_input_ids [B, T]``."""
    p, training = t5.config.dropout_rate, t5.training
    memory = _encode(t5, input_ids, attention_mask, p, training, drop)
    out = _decode(t5, decoder_input_ids, memory, attention_mask, p, training, drop)
    if t5.config.scale_decoder_outputs:
        out = out * (t5.model_dim ** -0.5)
    return out @ t5.lm_head.weight.t()


def cross_entropy_per_token(logits, target, ignore_index):
    """``[B, T]`` cross-entropy of ``logits [B, T, V]`` against ``target [B, T]`` (0 where ignored),
    over a contiguous ``[B * T, V]`` view (the class dimension last: several times faster on the
    CPU than the transposed layout)."""
    B, T, V = logits.shape
    return F.cross_entropy(logits.reshape(B * T, V).float(), target.reshape(B * T), ignore_index=ignore_index,
                           reduction="none").view(B, T)
