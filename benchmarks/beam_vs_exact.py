"""Beam search against the exact ranking of a semantic-ID model: how much of each user's exact
top-k the beam returns, NDCG@k under both rankings, and the time of each, for several beam widths.

    python benchmarks/beam_vs_exact.py --model=TIGER --dataset=ml-100k --epochs=1 --users=200
    python benchmarks/beam_vs_exact.py --model=MACRec --dataset=ml-100k --checkpoint=saved/MACRec-....pth --beams=10,20,50

It trains the model with the runner (any RecBole setting as ``--key=value``), or loads the weights
of ``--checkpoint`` (a best-epoch checkpoint this plugin saved, with the same settings), then runs
the beam check (``recbole_macrec/beam_check.py``) on the first ``--users`` test users for each
width in ``--beams``. "Exact" is the model's own score of every item (what the beam ranks by); a
two-view model's exact list is each view's exact top ``beam_size`` fused as the beams are, so it
is compared at the same width. Writes ``--out`` (default results/<dataset>/beam_vs_exact_<model>.json);
the last line reads like ``beam recall@10: 0.973; NDCG@10 beam 0.0412 vs exact 0.0418 (200 users)``
for the model's configured beam_size.
"""
import argparse
import os
import sys


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="TIGER")
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--beams", default="10,20,50", help="beam widths to check, comma-separated")
    parser.add_argument("--checkpoint", default=None, help="load these weights instead of training")
    parser.add_argument("--out", default=None)
    args, rest = parser.parse_known_args(argv)
    from recbole_macrec.config import parse_overrides

    return args, parse_overrides([r[2:] if r.startswith("--") else r for r in rest])


def trained_model(args, overrides):
    """``(model, test loader, config, facts)``: trained by the runner, or loaded from a checkpoint."""
    import torch

    from recbole_macrec.quick_start import build_run, fit_and_test

    run = build_run(args.model, args.dataset, config_dict={"show_progress": False, **overrides})
    if args.checkpoint:
        state = torch.load(args.checkpoint, map_location=run.config["device"], weights_only=True)
        run.model.load_state_dict(state["state_dict"])
        return run.model, run.loaders[2], run.config, {"checkpoint": args.checkpoint}
    fitted = fit_and_test(run, saved=True)   # the model holds the best epoch
    return run.model, run.loaders[2], run.config, {
        "epochs_run": len(fitted.trainer.train_loss_dict),
        "test_result": {k: float(v) for k, v in fitted.test_result.items()},
        "train_epoch_s": fitted.timer.train_epoch_s}


def main(argv=None):
    args, overrides = parse_args(argv)
    import recbole_macrec  # noqa: F401
    from recbole_macrec.beam_check import beam_check
    from recbole_macrec.files import write_json
    from recbole_macrec.results import machine_description

    model, test_data, config, facts = trained_model(args, overrides)
    configured = int(config["beam_size"])
    beams = sorted({int(b) for b in args.beams.split(",") if b} | {configured})
    checks = {}
    for beam in beams:
        if beam < args.k:
            print(f"beam {beam}: narrower than k={args.k}, skipped", file=sys.stderr)
            continue
        model.beam_size = beam
        checks[beam] = beam_check(model, test_data, args.users, args.k)
        c = checks[beam]
        print(f"beam {beam}: recall@{args.k} {c['recall_mean']:.3f} (median {c['recall_quantiles']['0.5']:.2f}, "
              f"10% {c['recall_quantiles']['0.1']:.2f}); NDCG@{args.k} beam {c['ndcg_beam']:.4f} vs exact "
              f"{c['ndcg_exact']:.4f}; {c['beam_s']:.1f} s beam, {c['exact_s']:.1f} s exact; decoder rows per user "
              + ", ".join(f"{v} {r['exact']} exact vs {r['beam']} beam" for v, r in c["decoder_rows"].items()),
              file=sys.stderr)
    model.beam_size = configured
    report = {"model": args.model, "dataset": args.dataset, "users": args.users, "k": args.k,
              "machine": machine_description(), "overrides": overrides, **facts,
              "configured_beam_size": configured, "checks": {str(b): c for b, c in checks.items()}}
    out = args.out or os.path.join("results", args.dataset, f"beam_vs_exact_{args.model}.json")
    write_json(out, report)
    print(f"results written to {out}", file=sys.stderr)
    c = checks[configured]
    print(f"beam recall@{args.k}: {c['recall_mean']:.3f}; NDCG@{args.k} beam {c['ndcg_beam']:.4f} vs exact "
          f"{c['ndcg_exact']:.4f} ({c['users']} users)")
    return report


if __name__ == "__main__":
    main()
