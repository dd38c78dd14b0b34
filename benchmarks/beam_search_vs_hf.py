"""Our constrained beam search vs transformers' generate + prefix_allowed_tokens_fn (a Python trie).

Same model, same inputs, ``generate`` with the released MACRec / MQL4GRec evaluation settings
(beam 20 returning 20 sequences, length_penalty 1.0, early stopping, eos allowed only after a full
item): asserts identical top-B item lists and equal scores (ours vs ``sequences_scores``), prints
and writes the speed ratio. The last printed line reads
``identical lists: yes; max score difference: 3.1e-07; ratio: 24.5x``.

    python benchmarks/beam_search_vs_hf.py [--users=128] [--batch=64] [--device=cuda] [--out=results/bench.json]

The catalogue is Instruments' published text codes (6,250 items x 4 levels) when
../shared/data/Instruments is present (or --codes=FILE), else ``--items`` random unique 4-level
codes. The T5 has the official sizes and random weights (the comparison needs no training).
"""
import argparse
import json
import os
import re
import sys
import time

import numpy as np
import torch

from recbole_macrec.model.beam_search import CodeTrie, constrained_beam_search
from recbole_macrec.model.beam_search import t5_beam_step
from recbole_macrec.model.vocab import EOS, PAD, SemanticIdVocab
from recbole_macrec.files import write_json
from recbole_macrec.timing import synchronize
from recbole_macrec.results import machine_description

DEFAULT_CODES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..",
                             "shared", "data", "Instruments", "Instruments.index_lemb.json")


def load_codes(path, n_items=6250, levels=4, size=256, seed=0):
    if path and os.path.isfile(path):
        with open(path) as f:
            raw = json.load(f)
        codes = np.array([[int(re.match(r"<\w+_(\d+)>", t).group(1)) for t in raw[k]]
                          for k in sorted(raw, key=int)])
        from recbole_macrec.quantization.collisions import cyclic_distances, resolve_collisions

        codes, _ = resolve_collisions(codes, cyclic_distances(codes, -1, size), cyclic_distances(codes, -2, size))
        return codes, os.path.basename(path)
    rng = np.random.default_rng(seed)
    codes = np.unique(rng.integers(0, size, size=(n_items * 2, levels)), axis=0)[:n_items]
    return codes, "random"


def build(codes, device, seed=0):
    from transformers import T5Config, T5ForConditionalGeneration

    table = torch.cat([torch.zeros(1, codes.shape[1], dtype=torch.long), torch.from_numpy(codes)])
    vocab = SemanticIdVocab({"text": table}, tasks=["seqrec"])
    torch.manual_seed(seed)
    t5 = T5ForConditionalGeneration(T5Config(
        vocab_size=vocab.size, d_model=128, d_kv=64, d_ff=1024, num_layers=4, num_decoder_layers=4,
        num_heads=6, dropout_rate=0.1, feed_forward_proj="relu", pad_token_id=PAD, eos_token_id=EOS,
        decoder_start_token_id=PAD)).to(device).eval()
    return vocab, t5


def make_sources(vocab, n_users, n_items, device, seed=0, max_hist=20):
    rng = np.random.default_rng(seed)
    tokens = vocab.item_token_table("text")
    rows = []
    for _ in range(n_users):
        hist = rng.integers(1, n_items + 1, size=int(rng.integers(1, max_hist + 1)))
        rows.append([vocab.task_ids["seqrec"], *tokens[hist].flatten().tolist(), EOS])
    width = max(map(len, rows))
    src = torch.tensor([r + [PAD] * (width - len(r)) for r in rows], device=device)
    return src, src.ne(PAD)


def ours(t5, trie, src, mask, beam):
    return constrained_beam_search(t5_beam_step(t5, src, mask), src.shape[0], trie, beam, EOS)


def hf_generate(t5, prefix_tree, item_of, src, mask, beam, levels):
    """``(items [B, beam], scores [B, beam])`` from ``generate`` as the released evaluation calls
    it; the trie allows eos after a full item and nothing else."""
    def allowed(batch_id, ids):
        node = prefix_tree
        for t in ids.tolist()[1:]:
            if t == EOS:
                return [PAD]
            node = node[t]
        return list(node) if node else [EOS]

    out = t5.generate(input_ids=src, attention_mask=mask, num_beams=beam, num_return_sequences=beam,
                      max_new_tokens=10, prefix_allowed_tokens_fn=allowed, do_sample=False,
                      length_penalty=1.0, early_stopping=True, output_scores=True,
                      return_dict_in_generate=True)
    seqs = out.sequences[:, 1:1 + levels].reshape(src.shape[0], beam, levels).tolist()
    items = torch.tensor([[item_of[tuple(s)] for s in row] for row in seqs])
    return items, out.sequences_scores.view(src.shape[0], beam).float().cpu()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--users", type=int, default=128)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--beam", type=int, default=20)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--codes", default=DEFAULT_CODES)
    parser.add_argument("--items", type=int, default=6250, help="random catalogue size without --codes")
    parser.add_argument("--out", default=None, help="write the results as json here")
    args = parser.parse_args(argv)

    codes, source = load_codes(args.codes, n_items=args.items)
    vocab, t5 = build(codes, args.device)
    n_items, levels = codes.shape
    tokens = vocab.item_token_table("text")
    trie = CodeTrie.from_codes(codes, np.arange(1, n_items + 1), vocab.level_offsets["text"],
                               vocab.level_sizes["text"]).to(args.device)
    prefix_tree, item_of = {}, {}
    for item in range(1, n_items + 1):
        node = prefix_tree
        for t in tokens[item].tolist():
            node = node.setdefault(t, {})
        item_of[tuple(tokens[item].tolist())] = item
    src, mask = make_sources(vocab, args.users, n_items, args.device)

    def timed(fn):
        results = []
        synchronize(args.device)
        start = time.perf_counter()
        with torch.no_grad():
            for b in range(0, args.users, args.batch):
                results.append(fn(src[b:b + args.batch], mask[b:b + args.batch]))
        synchronize(args.device)
        return results, time.perf_counter() - start

    ours(t5, trie, src[:2], mask[:2], args.beam)  # warm-up
    our_results, our_s = timed(lambda s, m: [x.cpu() for x in ours(t5, trie, s, m, args.beam)])
    hf_results, hf_s = timed(lambda s, m: hf_generate(t5, prefix_tree, item_of, s, m, args.beam, levels))
    ours_items, hf_items = (torch.cat([r[0] for r in results]) for results in (our_results, hf_results))
    ours_scores, hf_scores = (torch.cat([r[1] for r in results]) for results in (our_results, hf_results))
    identical = bool(torch.equal(ours_items, hf_items))
    score_diff = float((ours_scores - hf_scores).abs().max())
    same_sets = float(np.mean([len(set(a.tolist()) & set(b.tolist())) / args.beam
                               for a, b in zip(ours_items, hf_items)]))
    device = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else machine_description()
    result = {"device": device, "catalogue": source, "items": n_items, "levels": levels, "users": args.users,
              "batch": args.batch, "beam": args.beam, "identical_lists": identical,
              "max_score_difference": score_diff,
              "mean_overlap": same_sets, "ours_users_per_s": args.users / our_s,
              "hf_users_per_s": args.users / hf_s, "speedup": hf_s / our_s}
    print(json.dumps(result, indent=2))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        write_json(args.out, result)
    print(f"identical lists: {'yes' if identical else 'no'}; max score difference: {score_diff:.1e}; "
          f"ratio: {result['speedup']:.1f}x")
    if not identical or score_diff > 1e-3:
        sys.exit("top-B lists or scores differ between our beam search and HF generate")


if __name__ == "__main__":
    main()
