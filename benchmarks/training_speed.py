"""Training speed of a generative model, side by side in one process: today's fp32 step
(transformers' T5 forward, torch's dropout) against the fast default and each lever alone, on the
same model (same initial weights), the same batches and the same device.

    python benchmarks/training_speed.py --model=TIGER --dataset=ml-100k
    python benchmarks/training_speed.py --model=MACRec --dataset=ml-100k [--steps=50] [--compile] [--key=value ...]

Variants (each from the same initial weights, a fresh AdamW, the same batches, one after another):
  fp32              the step as it was: transformers' forward, torch's dropout, fp32, the token
                    cross-entropy over the transposed [B, V, T] logits
  fp32, anomaly     the same with torch's anomaly detection on, as every run of a process that had
                    imported RecBole's sequential models ran before (RecBole's sine.py turns it on;
                    the plugin now turns it back off)
  contiguous CE     the same with the cross-entropy over a contiguous [B * T, V] view (now always)
  lean forward      the lean T5 forward (recbole_macrec/model/t5_training.py) with torch's dropout
  cheap masks       lean forward + dropout masks from 32 random bits per element (dropout_mask.py)
  bf16              transformers' forward under bf16 autocast (CPUs with native bf16, CUDA)
  fast              the default: lean forward + cheap masks + bf16 where it is native
  fast, batch x4    the default on batches of 4x the rows (seconds per original batch's rows)
  compile           (--compile) the default with the lean forward under torch.compile
The timed window follows 2 untimed warm-up steps; ``--rounds`` rounds run every variant in turn
and the median is reported. The loss difference compares the mean loss of the last 10 of
``--steps`` steps, fast minus fp32, as the mean over ``--loss-seeds`` dropout seeds (each pair
from the same weights and batches; the masks differ) with its standard error. Writes a json
(``--out``, default results/<dataset>/training_speed_<model>_<device>.json); the last line reads
like ``TIGER ml-100k: fp32 0.180 s/step, fast 0.055 s/step, 3.3x; loss difference after 50 steps: 0.004``.

``--profile=N`` instead profiles N steps of the fp32 and the fast step with torch.profiler and
writes where each step's time goes (the operators with the most self time, their share of the
step; default out: results/<dataset>/training_profile_<model>_<device>.json).
"""
import argparse
import contextlib
import copy
import itertools
import os
import statistics
import sys
import time

import torch

WARMUP = 2
LOSS_WINDOW = 10


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="TIGER")
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds (the median is reported)")
    parser.add_argument("--loss-seeds", type=int, default=4, help="dropout seeds the loss comparison pairs")
    parser.add_argument("--compile", action="store_true", help="also time the lean forward under torch.compile")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="only profile N steps of the fp32 and the fast step (torch.profiler)")
    parser.add_argument("--out", default=None)
    args, rest = parser.parse_known_args(argv)
    from recbole_macrec.config import parse_overrides

    return args, parse_overrides([r[2:] if r.startswith("--") else r for r in rest])


def transposed_cross_entropy(logits, target, ignore_index):
    """The token cross-entropy as the step computed it before (class dimension in the middle)."""
    import torch.nn.functional as F

    return F.cross_entropy(logits.float().transpose(1, 2), target, ignore_index=ignore_index, reduction="none")


def concat_batches(batches):
    """One Interaction holding the rows of ``batches`` (same fields, same history width)."""
    from recbole.data.interaction import Interaction

    return Interaction({k: torch.cat([b[k] for b in batches]) for k in batches[0].interaction})


class Bench:
    """A model, its trainer and a fixed list of training batches; every variant starts from the
    same weights."""

    def __init__(self, model, dataset, overrides, steps, seed):
        from recbole_macrec.quick_start import build_run
        from recbole_macrec.registry import get_trainer

        run = build_run(model, dataset, config_dict={"show_progress": False, "state": "WARNING", "seed": seed,
                                                     **overrides})
        self.config, self.model, self.seed = run.config, run.model, seed
        self.trainer = get_trainer(run.config["MODEL_TYPE"], run.config["model"])(run.config, run.model)
        loader = self.trainer.batches_of(run.loaders[0])
        epochs = itertools.chain.from_iterable(loader for _ in itertools.count())   # as many epochs as needed
        self.batches = [b.to(self.trainer.device) for b in itertools.islice(epochs, 4 * (WARMUP + steps))]
        self.steps = steps
        self.init = copy.deepcopy(self.model.state_dict())
        from recbole_macrec.trainer.generative_trainer import native_bf16

        self.native_bf16 = bool(run.config["gr_bf16"]) and native_bf16(self.trainer.device)

    def measure(self, lean, cheap_masks, bf16, group=1, compiled=False, seed=None, old_ce=False, anomaly=False,
                profiler=None):
        """``(seconds per step, losses)`` of ``steps`` steps after the warm-up; with ``group`` > 1
        each step joins ``group`` batches and its seconds are divided by ``group`` (seconds per
        original batch's rows). ``profiler`` (a context manager) wraps the timed steps."""
        import torch.nn.functional as F

        from recbole_macrec.model import encoder_decoder, t5_training
        from recbole_macrec.model.dropout_mask import dropout
        from recbole_macrec.timing import synchronize

        model, trainer = self.model, self.trainer
        model.load_state_dict(self.init)
        trainer.optimizer = trainer._build_optimizer()
        trainer.scheduler = None
        trainer.bf16 = bf16
        fast_train = getattr(model, "fast_train", None)
        if fast_train is not None:
            model.fast_train = lean
            model.train_dropout = dropout if cheap_masks else F.dropout
        original, ce = t5_training.t5_logits, encoder_decoder.cross_entropy_per_token
        if old_ce:
            encoder_decoder.cross_entropy_per_token = transposed_cross_entropy
        if compiled:
            t5_training.t5_logits = torch.compile(original, dynamic=True)
        batches = self.batches if group == 1 else [concat_batches(self.batches[i:i + group])
                                                    for i in range(0, len(self.batches), group)]
        torch.manual_seed(self.seed if seed is None else seed)
        model.train()
        torch.autograd.set_detect_anomaly(anomaly)
        try:
            for batch in batches[:WARMUP]:
                trainer.train_step(batch)
            losses = []
            synchronize(trainer.device)
            start = time.perf_counter()
            with profiler or contextlib.nullcontext():
                for batch in batches[WARMUP:WARMUP + self.steps]:
                    losses.append(trainer.train_step(batch))
                synchronize(trainer.device)
            seconds = (time.perf_counter() - start) / self.steps / group
        finally:
            torch.autograd.set_detect_anomaly(False)
            t5_training.t5_logits, encoder_decoder.cross_entropy_per_token = original, ce
            if fast_train is not None:
                model.fast_train, model.train_dropout = fast_train, dropout
        return seconds, [float(x) for x in losses]


def operator_profile(bench, settings, top=15):
    """Where ``bench.steps`` steps of ``settings`` spend their time: seconds per step and the
    ``top`` operators by self time (their share of the profiled time, and calls per step)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if bench.trainer.device.type == "cuda" else [])
    prof = profile(activities=activities)
    seconds, _ = bench.measure(**settings, profiler=prof)
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return {"s_per_step_profiled": round(seconds, 5),
            "operators": [{"name": e.key, "share": round(e.self_cpu_time_total / total, 4),
                           "ms_per_step": round(e.self_cpu_time_total / 1000 / bench.steps, 3),
                           "calls_per_step": round(e.count / bench.steps, 1)} for e in events[:top]]}


def report_header(args, bench):
    """What every report of this script starts with: the model, data, device and step count."""
    from recbole_macrec.results import machine_description

    return {"model": args.model, "dataset": args.dataset, "device": str(bench.trainer.device),
            "machine": machine_description(), "torch_threads": torch.get_num_threads(), "steps": bench.steps}


def output_path(args, bench, kind):
    """``--out``, or results/<dataset>/<kind>_<model>_<cpu|cuda>.json."""
    device = "cuda" if bench.trainer.device.type == "cuda" else "cpu"
    return args.out or os.path.join("results", args.dataset, f"{kind}_{args.model}_{device}.json")


def profile_main(args, bench, variants):
    from recbole_macrec.files import write_json

    report = {**report_header(args, bench),
              "profiles": {name: operator_profile(bench, variants[name]) for name in ("fp32", "fast")}}
    write_json(output_path(args, bench, "training_profile"), report)
    for name, prof in report["profiles"].items():
        print(f"{name}: {prof['s_per_step_profiled']:.3f} s/step under the profiler; "
              + ", ".join(f"{op['name']} {op['share']:.0%}" for op in prof["operators"][:6]))
    return report


def window_mean(losses):
    return sum(losses[-LOSS_WINDOW:]) / len(losses[-LOSS_WINDOW:])


def main(argv=None):
    args, overrides = parse_args(argv)
    import recbole_macrec  # noqa: F401
    from recbole_macrec.files import write_json

    bench = Bench(args.model, args.dataset, overrides, args.profile or args.steps, args.seed)
    bf16 = bench.native_bf16
    has_t5 = getattr(bench.model, "fast_train", None) is not None
    variants = {"fp32": dict(lean=False, cheap_masks=False, bf16=False, old_ce=has_t5),
                "fp32, anomaly": dict(lean=False, cheap_masks=False, bf16=False, old_ce=has_t5, anomaly=True)}
    if has_t5:
        variants["contiguous CE"] = dict(lean=False, cheap_masks=False, bf16=False)
        variants["lean forward"] = dict(lean=True, cheap_masks=False, bf16=False)
        variants["cheap masks"] = dict(lean=True, cheap_masks=True, bf16=False)
    if bf16:
        variants["bf16"] = dict(lean=False, cheap_masks=False, bf16=True)
    fast = dict(lean=has_t5, cheap_masks=has_t5, bf16=bf16)
    variants["fast"] = fast
    variants["fast, batch x4"] = dict(fast, group=4)
    if args.compile and has_t5:
        variants["compile"] = dict(fast, compiled=True)
    if args.profile:
        return profile_main(args, bench, variants)
    timings, results = {name: [] for name in variants}, {}
    for round_ in range(args.rounds):   # rounds alternate the variants: a slow spell of the machine hits all
        for name, settings in variants.items():
            seconds, losses = bench.measure(**settings)
            timings[name].append(seconds)
            if round_ == 0:
                results[name] = {"loss_window_mean": round(window_mean(losses), 5),
                                 "losses": [round(x, 5) for x in losses], "settings": settings}
            print(f"round {round_ + 1} {name:>16}: {seconds:.4f} s/step, mean loss of the last {LOSS_WINDOW} "
                  f"steps {window_mean(losses):.4f}", file=sys.stderr, flush=True)
    for name, seconds in timings.items():
        results[name].update(s_per_step=round(statistics.median(seconds), 5), s_per_step_rounds=[round(t, 5) for t in seconds])
    # the loss: fast vs fp32 from the same weights and batches, paired over dropout seeds
    differences = []
    for k in range(args.loss_seeds):
        pair = [window_mean(bench.measure(**variants[name], seed=args.seed + k)[1]) for name in ("fp32", "fast")]
        differences.append(pair[1] - pair[0])
    base, quick = results["fp32"], results["fast"]
    report = {
        **report_header(args, bench), "rounds": args.rounds,
        "train_batch_size": int(bench.config["train_batch_size"]), "overrides": overrides,
        "variants": results, "speedup": round(base["s_per_step"] / quick["s_per_step"], 3),
        "speedup_per_lever": {name: round(base["s_per_step"] / r["s_per_step"], 3) for name, r in results.items()},
        "speedup_over_anomaly_step": round(results["fp32, anomaly"]["s_per_step"] / quick["s_per_step"], 3),
        "loss_difference": round(statistics.mean(differences), 5),
        "loss_difference_se": round(statistics.stdev(differences) / len(differences) ** 0.5, 5)
        if len(differences) > 1 else None,
        "loss_differences_per_seed": [round(d, 5) for d in differences],
    }
    out = output_path(args, bench, "training_speed")
    write_json(out, report)
    print(f"results written to {out}; against the step with anomaly detection on (leaderboard runs before): "
          f"{report['speedup_over_anomaly_step']:.1f}x", file=sys.stderr)
    print(f"{args.model} {args.dataset}: fp32 {base['s_per_step']:.3f} s/step, fast {quick['s_per_step']:.3f} s/step, "
          f"{report['speedup']:.1f}x; loss difference after {args.steps} steps: {report['loss_difference']:+.3f} "
          f"(mean over {args.loss_seeds} dropout seeds, standard error {report['loss_difference_se'] or 0:.3f})")
    return report


if __name__ == "__main__":
    main()
