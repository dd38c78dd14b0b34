"""Decoding tables at catalogue scale: dense vs sparse trie levels on random semantic IDs.

    python benchmarks/trie_scale.py --items=10000,100000,1000000 --out=results/scale/trie.json

For each catalogue size (random unique codes, 4 levels x 256) it builds the trie twice, every
level dense and with the automatic choice (sparse where a level has more than 2^22 prefix x code
cells), and records the table memory per level, the build time, and the time of one
constrained beam search (beam 20, 64 users) whose decoder is replaced by random log-probabilities,
so the numbers are the trie's and the beam bookkeeping's alone. Both must return the same items
and scores for a stand-in decoder whose log-probabilities depend on each beam's token path (as a
real decoder's do), listed by (score, item) so that exactly tied scores cannot reorder them.
"""
import argparse
import json
import sys
import time

import numpy as np
import torch

from recbole_macrec.model.beam_search import DENSE_LIMIT, CodeTrie, constrained_beam_search
from recbole_macrec.files import write_json
from recbole_macrec.results import machine_description

LEVELS, SIZE, EOS = 4, 256, 1


def random_codes(n, seed=0):
    rng = np.random.default_rng(seed)
    codes = np.unique(rng.integers(0, SIZE, size=(int(n * 1.05) + 10, LEVELS)), axis=0)
    return codes[rng.permutation(len(codes))[:n]]


def fake_step(users, beam, vocab, seed=0):
    """A decoder stand-in: seeded random log-probabilities over ``vocab`` tokens per row."""
    generator = torch.Generator().manual_seed(seed)

    def step(tokens, reorder):
        rows = users if tokens is None else users * beam
        return torch.log_softmax(torch.randn(rows, vocab, generator=generator), dim=-1)

    return step


def path_step(users, beam, vocab, seed=0, table_rows=4096):
    """A decoder stand-in whose log-probabilities are a function of each row's token path."""
    table = torch.log_softmax(torch.randn(table_rows, vocab, generator=torch.Generator().manual_seed(seed)), -1)
    state = {"path": torch.arange(users) * 7919}

    def step(tokens, reorder):
        if tokens is not None:
            state["path"] = (state["path"][reorder] * 1000003 + tokens.view(-1)) % (2 ** 61 - 1)
        return table[state["path"] % table_rows]

    return step


def canonical(items, scores):
    """Each user's list ordered by (score descending, item): exact ties cannot reorder it."""
    out = []
    for row_items, row_scores in zip(items.tolist(), scores.tolist()):
        out.append(sorted(zip(row_scores, row_items), key=lambda p: (-p[0], p[1])))
    return out


def measure(codes, dense_limit, users, beam, repeats):
    offsets = [2 + level * SIZE for level in range(LEVELS)]
    start = time.perf_counter()
    trie = CodeTrie.from_codes(codes, np.arange(1, len(codes) + 1), offsets, [SIZE] * LEVELS, dense_limit)
    build_s = time.perf_counter() - start
    vocab = 2 + LEVELS * SIZE
    constrained_beam_search(fake_step(users, beam, vocab), users, trie, beam, EOS)   # warm-up
    start = time.perf_counter()
    for r in range(repeats):
        items, _ = constrained_beam_search(fake_step(users, beam, vocab, r), users, trie, beam, EOS)
    search_s = (time.perf_counter() - start) / repeats
    items = canonical(*constrained_beam_search(path_step(users, beam, vocab), users, trie, beam, EOS))
    return items, {"build_s": round(build_s, 3), "search_ms": round(1000 * search_s, 2),
                   "ms_per_step": round(1000 * search_s / (LEVELS + 1), 3),
                   "table_mb": round(trie.nbytes() / 2 ** 20, 2),
                   "levels": [{"form": "dense" if lvl.dense else "sparse", "shape": list(lvl.child.shape),
                               "mb": round(lvl.nbytes() / 2 ** 20, 2)} for lvl in trie.levels]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--items", default="10000,100000,1000000")
    parser.add_argument("--users", type=int, default=64)
    parser.add_argument("--beam", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    rows = []
    for n in [int(x) for x in args.items.split(",")]:
        codes = random_codes(n)
        dense_items, dense = measure(codes, float("inf"), args.users, args.beam, args.repeats)
        auto_items, auto = measure(codes, DENSE_LIMIT, args.users, args.beam, args.repeats)
        rows.append({"items": n, "dense": dense, "auto": auto, "identical_items": dense_items == auto_items})
        print(json.dumps(rows[-1]), flush=True)
        if not rows[-1]["identical_items"]:
            sys.exit(f"{n} items: dense and automatic tries decode different items")
    result = {"machine": machine_description(), "torch_threads": torch.get_num_threads(),
              "levels": LEVELS, "codebook": SIZE, "users": args.users, "beam": args.beam, "rows": rows}
    if args.out:
        write_json(args.out, result)   # (creates the folder)
    return result


if __name__ == "__main__":
    main()
