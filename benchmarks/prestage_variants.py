"""Semantic-ID quality of pre-stage variants on one dataset, over seeds.

    python benchmarks/prestage_variants.py --dataset=ml-100k --seeds=2020,2021,2022 \
        --out=results/ml-100k/prestage_variants.json

Variants (each a set of settings over the dataset yaml's pre-stage): ``macrec`` (paper objective),
``macrec_same_item`` (the per-level term with the item's own other-view residual as positive),
``macrec_wo_con`` (no contrastive term), ``macrec_wo_con_quantized_align`` (no contrastive term,
L_align on the straight-through vector), ``macrec_released`` (the released objective),
``rqvae`` (TIGER) and ``rqvae_sinkhorn`` (MQL4GRec). Per view it records, from the pre-stage's own
report: the collision rate before resolution, codebook usage and perplexity per level; and the
cross-view agreement per prefix length l: of the item pairs whose codes share their first l levels
in one view, the fraction that fall in the same k-means cluster (K = sid_pseudo_label_k) of the
OTHER view's raw embeddings (the reference clustering is the same for every variant and seed).
Codes are read after collision resolution, which changes only the last level (rarely the one
before it), so prefixes shorter than L are the trained ones.
"""
import argparse
import json
import os

import numpy as np


VARIANTS = {
    "macrec": {"sid_method": "macrec", "sid_con_variant": "paper"},
    "macrec_same_item": {"sid_method": "macrec", "sid_con_variant": "same_item"},
    "macrec_wo_con": {"sid_method": "macrec", "sid_con_variant": "none"},
    "macrec_wo_con_quantized_align": {"sid_method": "macrec", "sid_con_variant": "none",
                                      "sid_align_target": "quantized"},
    "macrec_released": {"sid_method": "macrec", "sid_con_variant": "released", "sid_align_target": "quantized"},
    "rqvae": {"sid_method": "rqvae"},
    "rqvae_sinkhorn": {"sid_method": "rqvae_sinkhorn"},
}


def pair_count(counts):
    counts = np.asarray(counts, dtype=np.float64)
    return float((counts * (counts - 1) / 2).sum())


def cross_view_agreement(codes, other_labels):
    """``[L - 1]``: for prefix lengths 1..L-1 of ``codes [N, L]``, the fraction of same-prefix item
    pairs that share a cluster in ``other_labels [N]``."""
    out = []
    for length in range(1, codes.shape[1]):
        _, prefix = np.unique(codes[:, :length], axis=0, return_inverse=True)
        prefix = prefix.reshape(-1)
        same_prefix = pair_count(np.bincount(prefix))
        joint = prefix.astype(np.int64) * (int(other_labels.max()) + 1) + other_labels
        same_both = pair_count(np.unique(joint, return_counts=True)[1])
        out.append(same_both / same_prefix if same_prefix else float("nan"))
    return out


def read_codes(folder, dataset, views):
    from recbole_macrec.data.atomic import atomic_file, read_atomic

    frame, _ = read_atomic(atomic_file(folder, dataset, "item"))
    items = [str(t) for t in frame["item_id"]]
    return items, {v: np.array([[int(float(c)) for c in str(s).split()] for s in frame[f"{v}_sid"]])
                   for v in views}


def run_variant(dataset, seed, settings, config_files):
    from recbole_macrec.config import Config
    from recbole_macrec.semantic_ids import build_semantic_ids, read_report

    config = Config(model="MACRec", dataset=dataset, config_file_list=config_files,
                    config_dict={**settings, "seed": seed, "show_progress": False})
    folder = build_semantic_ids(config, settings["sid_method"], show_progress=False)
    return config, folder, read_report(folder)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--seeds", default="2020,2021,2022")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--config_files", default=None)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    import recbole_macrec  # noqa: F401
    from recbole.utils import init_logger

    from recbole_macrec.data.default_views import ensure_item_views
    from recbole_macrec.quantization.kmeans import pseudo_labels
    from recbole_macrec.files import write_json

    files = args.config_files.split() if args.config_files else None
    results, reference = [], None
    for seed in [int(s) for s in args.seeds.split(",")]:
        for name in args.variants.split(","):
            config, folder, report = run_variant(args.dataset, seed, VARIANTS[name], files)
            init_logger(config)
            views = report["views"]
            items, codes = read_codes(folder, config["dataset"], views)
            if reference is None:   # the other view's clusters, one fixed clustering for all rows
                loaded = ensure_item_views(config, views)
                reference = {}
                for v in views:
                    rows = {t: i for i, t in enumerate(loaded[v][0])}
                    emb = loaded[v][1][[rows[t] for t in items]]
                    reference[v] = pseudo_labels(emb, config["sid_pseudo_label_k"], 2020)
            for view_report in report["per_view"]:
                v = view_report["view"]
                other = [w for w in views if w != v][0]
                results.append({
                    "variant": name, "seed": seed, "view": v, "settings": VARIANTS[name],
                    "collision_rate_before": view_report["collision_rate_before"],
                    "best_epoch": view_report.get("best_epoch"),
                    "usage": [s["usage"] for s in view_report["codebook_before"]],
                    "perplexity": [s["perplexity"] for s in view_report["codebook_before"]],
                    "cross_view_agreement": cross_view_agreement(codes[v], reference[other]),
                    "random_pair_agreement": pair_count(np.bincount(reference[other]))
                    / pair_count([len(items)]),
                    "sid_folder": os.path.basename(folder), "prestage_s": report["seconds"]})
                print(json.dumps({k: results[-1][k] for k in ("variant", "seed", "view",
                                                              "collision_rate_before", "cross_view_agreement")}),
                      flush=True)
    write_json(args.out, {"dataset": args.dataset, "rows": results})
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
