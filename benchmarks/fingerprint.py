"""A behaviour fingerprint of the semantic-ID models: test and best-valid metrics and the pre-stage's
collision rates of seven runs on a small generated dataset (60 users who walk item ids upward, 40
items with a title and a genre), each with a trained pre-stage (text + collab views), 2 epochs,
seed 7. Two checkouts that compute the same thing write the same file, byte for byte: refactors
compare the file before and after.

    python benchmarks/fingerprint.py --out=/tmp/fingerprint.json
"""
import argparse
import json
import os
import sys
import tempfile

import numpy as np

GENRES = ["rock", "jazz", "folk", "pop", "metal", "blues"]
SMALL = {"d_model": 16, "d_kv": 8, "d_ff": 32, "num_layers": 1, "num_decoder_layers": 1, "num_heads": 2,
         "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
         "num_key_value_heads": 2, "lcrec_text_len": 6, "train_batch_size": 32, "eval_batch_size": 16,
         "learning_rate": 0.005, "epochs": 2, "eval_step": 1, "seed": 7, "gr_grad_accum": 1, "gr_bf16": False,
         "sid_views": ["text", "collab"], "text_view_fields": ["title", "class"], "view_dim": 8, "sid_num_levels": 3,
         "sid_codebook_size": 8, "sid_e_dim": 8, "sid_encoder_layers": [16], "sid_projection_dim": 8, "sid_epochs": 4,
         "sid_batch_size": 16, "sid_pseudo_label_k": 4, "sid_con_weights": [0, 0.1, 0.1], "sid_kmeans_iters": 10,
         "show_progress": False, "state": "WARNING", "use_gpu": False}
CASES = {
    "TIGER": ("TIGER", {}),
    "MACRec": ("MACRec", {}),
    "MACRec per_batch": ("MACRec", {"gr_task_mix": "per_batch"}),
    "MACRec mean fusion": ("MACRec", {"fusion": "mean"}),
    "MQL4GRec": ("MQL4GRec", {"sid_epochs": 4}),
    "LCRec": ("LCRec", {}),
    "LCRec per_batch": ("LCRec", {"gr_task_mix": "per_batch"}),
}


def make_dataset(root, n_users=60, n_items=40, seed=0):
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "walk")
    os.makedirs(folder, exist_ok=True)
    lines, t = ["user_id:token\titem_id:token\ttimestamp:float"], 0
    for u in range(n_users):
        start = int(rng.integers(0, n_items))
        for k in range(int(rng.integers(5, 11))):
            lines.append(f"u{u}\ti{(start + k) % n_items}\t{t}")
            t += 1
    with open(os.path.join(folder, "walk.inter"), "w") as f:
        f.write("\n".join(lines) + "\n")
    items = ["item_id:token\ttitle:token_seq\tclass:token_seq"]
    items += [f"i{i}\titem number {i} {GENRES[i % 6]}\t{GENRES[i % 6]}" for i in range(n_items)]
    with open(os.path.join(folder, "walk.item"), "w") as f:
        f.write("\n".join(items) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    sys.argv = sys.argv[:1]   # RecBole's Config reads --key=value from the command line
    import recbole_macrec  # noqa: F401
    from recbole_macrec.files import write_json
    from recbole_macrec.quick_start import run_recbole

    fingerprint = {}
    with tempfile.TemporaryDirectory() as tmp:
        make_dataset(os.path.join(tmp, "data"))
        os.chdir(tmp)
        for name, (model, extra) in CASES.items():
            settings = {**SMALL, "data_path": os.path.join(tmp, "data"), "checkpoint_dir": os.path.join(tmp, "saved"),
                        "results_dir": os.path.join(tmp, "results"),
                        "load_col": {"inter": ["user_id", "item_id", "timestamp"],
                                     "item": ["item_id", "title", "class"]}, **extra}
            result = run_recbole(model, "walk", config_dict=settings)
            with open(result["result_file"]) as f:
                saved = json.load(f)
            fingerprint[name] = {"test_result": saved["test_result"], "best_valid_result": saved["best_valid_result"],
                                 "collisions": {view: v["collision_rate_before"]
                                                for view, v in saved["semantic_ids"]["per_view"].items()}}
            print(f"{name}: test NDCG@10 {saved['test_result']['ndcg@10']:.4f}", file=sys.stderr, flush=True)
    write_json(args.out, fingerprint)
    print(f"fingerprint of {len(fingerprint)} runs written to {args.out}")


if __name__ == "__main__":
    main()
