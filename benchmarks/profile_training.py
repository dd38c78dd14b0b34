"""Where a generative model's training time goes: data loading vs compute, before and after the
speed work (device-resident, length-grouped batches; tasks packed into one forward pass), and the
released task mixture's epoch (``gr_task_mix: released``).

Every variant runs in the same process on the same model, data and device, so the ratios are
side-by-side comparisons (absolute seconds on a shared CPU are upper bounds):

    python benchmarks/profile_training.py --model=MACRec --dataset=ml-100k --batches=8 \
        --out=results/ml-100k/profile_MACRec_cpu.json [--set train_batch_size=1024 ...]
    python benchmarks/profile_training.py --model=MACRec --dataset=Instruments --flops-only ...

Reported per batch: RecBole's loader vs the device loader (fetch + copy to the device); the
training step (forward, backward, optimiser) for each combination of {one forward per task,
packed tasks} x {random batches, length-grouped batches}; the share of history-token slots that
are padding in random vs grouped batches (over a whole epoch); the estimated epoch time of
the old path (RecBole loader, one forward per task, random batches) vs the new one; the new
path's FLOPs per step and epoch, and the FLOP/s its step time achieves; and, on CUDA, the host
syncs per training step with the source lines that make them. The ``mixture`` section times the
released mixture's steps (every history task over every training row, every item task over every
catalogue item, shuffled together and length-grouped) and counts its epoch's FLOPs.
"""
import argparse
import copy
import json
import os
import time

import torch

from recbole_macrec.data.device_loader import LengthGroupedLoader, TaskMixtureLoader
from recbole_macrec.config import parse_overrides
from recbole_macrec.quick_start import build_run
from recbole_macrec.results import machine_description
from recbole_macrec.trainer.generative_trainer import GenerativeTrainer
from recbole_macrec.files import write_json
from recbole_macrec.timing import synchronize


def seconds_per_batch(batches, device, n):
    """Mean seconds to draw a batch and have it on the device (first draw excluded)."""
    iterator = iter(batches)
    next(iterator).to(device)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(n):
        next(iterator).to(device)
    synchronize(device)
    return (time.perf_counter() - start) / n


def padding_share(loader, field):
    """Share of history slots (batch max length x rows) that are padding, over one epoch."""
    slots = used = 0
    for batch in loader:
        lengths = batch[field]
        slots += int(lengths.max()) * len(lengths)
        used += int(lengths.sum())
    return 1 - used / slots


def step_seconds(trainer, batches, n, device):
    """Mean seconds of one training step over ``n`` batches (one warm-up step excluded)."""
    trainer.train_step(batches[0])
    synchronize(device)
    start = time.perf_counter()
    for batch in batches[1:n + 1]:
        trainer.train_step(batch)
    synchronize(device)
    return (time.perf_counter() - start) / n


def flops_per_step(trainer, batches):
    """Mean floating-point operations of one training step (forward and backward; matrix products
    and attention, as torch's FlopCounterMode counts them) over ``batches``."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        for batch in batches:
            trainer.train_step(batch)
    return counter.get_total_flops() / len(batches)


def epoch_flops(trainer, loader, rows_per_length=8):
    """Floating-point operations of one epoch of ``loader`` (a LengthGroupedLoader or a
    TaskMixtureLoader, whose rows of one length cost about the same whatever their task). A batch is
    computed at its longest history, so its FLOPs are rows x (FLOPs per row at that length); the
    per-row FLOPs of each length come from one step on a few rows of exactly that length, which is
    far cheaper than counting every batch and, unlike a few sampled batches, has no sampling error
    (histories of 1 and of 20 items differ several-fold). Terms that grow with rows squared (MACRec's
    in-batch implicit loss, a batch x batch similarity) are not exact: 0.8% off on the tiny test data."""
    lengths = loader.row_lengths()
    per_row = {}
    for length in torch.unique(lengths).tolist():
        rows = torch.nonzero(lengths == length).flatten()[:rows_per_length]
        per_row[length] = flops_per_step(trainer, [loader.batch(rows)]) / len(rows)
    return sum(len(index) * per_row[int(lengths[index].max())] for index in loader.epoch_order())


def host_syncs_per_step(trainer, batches, device):
    """CUDA only: ``(syncs per step, {source line: count})`` of the device-to-host syncs that
    training steps make (each stalls the CPU until the GPU catches up), from torch's sync debug
    mode over the steps of ``batches``."""
    import collections
    import warnings

    trainer.train_step(batches[0])
    synchronize(device)
    where = collections.Counter()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for batch in batches[1:]:
                trainer.train_step(batch)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for w in caught:
        if "synchroniz" in str(w.message):
            where[f"{os.path.relpath(w.filename)}:{w.lineno}"] += 1
    return sum(where.values()) / max(1, len(batches) - 1), dict(where.most_common(10))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="MACRec")
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--batches", type=int, default=8, help="timed batches per variant")
    parser.add_argument("--data-only", action="store_true", help="loaders and padding only (no model steps)")
    parser.add_argument("--flops-only", action="store_true",
                        help="loaders, padding and the FLOPs of one epoch only (no timed steps)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    overrides = parse_overrides(args.set)
    overrides.setdefault("show_progress", False)

    config, _, (train_data, _, _), model, *_ = build_run(args.model, args.dataset, config_dict=overrides)
    device = config["device"]
    field = config["ITEM_LIST_LENGTH_FIELD"]
    group = int(config["gr_length_group"] or 50)
    n = min(args.batches, len(train_data) - 2)

    start = time.perf_counter()
    grouped_loader = LengthGroupedLoader(train_data, device, field, group=group, seed=config["seed"])
    random_loader = LengthGroupedLoader(train_data, device, field, group=1, seed=config["seed"])
    synchronize(device)
    setup_s = time.perf_counter() - start

    report = {"model": args.model, "dataset": args.dataset, "machine": machine_description(),
              "train_batch_size": int(train_data.step), "batches_per_epoch": len(train_data),
              "timed_batches": n, "length_group": group, "overrides": overrides,
              "data_s_per_batch": {"recbole_loader": seconds_per_batch(train_data, device, n),
                                   "device_loader": seconds_per_batch(grouped_loader, device, n)},
              "device_loader_setup_s": setup_s,
              "padding_share": {"random": padding_share(random_loader, field),
                                "grouped": padding_share(grouped_loader, field)}}

    mixture = model.task_mixture()
    if mixture is not None:
        fields = {"seq": model.ITEM_SEQ, "length": model.ITEM_SEQ_LEN, "item": model.POS_ITEM_ID}
        mixture_loader = TaskMixtureLoader(train_data, device, fields, mixture, model.n_items, group=group,
                                           seed=config["seed"])
        report["mixture"] = {"tasks": [t for t, _ in mixture], "batches_per_epoch": len(mixture_loader),
                             "padding_share": padding_share(mixture_loader, field)}
    if args.data_only:
        return write_report(report, args.out)
    mix = model.task_mix
    model.task_mix = "per_batch"   # the loaders' batches train as per_batch does: every task from each batch
    if args.flops_only:
        model.train()
        trainer = GenerativeTrainer(config, model)
        report["flops"] = {"per_epoch": epoch_flops(trainer, grouped_loader),
                           "per_epoch_random_batches": epoch_flops(trainer, random_loader)}
        if mixture is not None:
            model.task_mix = mix
            report["mixture"]["flops_per_epoch"] = epoch_flops(trainer, mixture_loader)
        return write_report(report, args.out)
    batches = {"random": [b for _, b in zip(range(n + 1), random_loader)],
               "grouped": [b for _, b in zip(range(n + 1), grouped_loader)]}
    initial = copy.deepcopy(model.state_dict())
    compute = {}
    model.train()
    for pack in (False, True):
        for order in ("random", "grouped"):
            model.load_state_dict(initial)
            model.pack_tasks = pack
            trainer = GenerativeTrainer(config, model)
            name = f"{'packed' if pack else 'per_task'}_{order}"
            compute[name] = step_seconds(trainer, batches[order], n, device)
            print(f"{name}: {compute[name]:.3f} s/step", flush=True)
    report["compute_s_per_batch"] = compute
    # the new path's arithmetic (trainer and model as last timed: packed, grouped), so that the
    # step time reads as achieved FLOP/s against the device's peak
    timed = flops_per_step(trainer, batches["grouped"][1:n + 1])   # the steps step_seconds timed
    report["flops"] = {"per_timed_step": timed, "achieved_tflop_s": timed / compute["packed_grouped"] / 1e12,
                       "per_epoch": epoch_flops(trainer, grouped_loader)}
    print(f"{timed / 1e12:.3f} TFLOP per timed step, {report['flops']['achieved_tflop_s']:.2f} TFLOP/s "
          f"achieved; {report['flops']['per_epoch'] / 1e12:.1f} TFLOP per epoch", flush=True)
    if mixture is not None:
        model.load_state_dict(initial)
        model.task_mix = mix
        trainer = GenerativeTrainer(config, model)
        steps = [b for _, b in zip(range(n + 1), mixture_loader)]
        report["mixture"]["compute_s_per_batch"] = step_seconds(trainer, steps, min(n, len(steps) - 1), device)
        report["mixture"]["flops_per_epoch"] = epoch_flops(trainer, mixture_loader)
        report["mixture"]["epoch_s_estimate"] = report["mixture"]["compute_s_per_batch"] * len(mixture_loader)
        print(f"mixture: {report['mixture']['compute_s_per_batch']:.3f} s/step x {len(mixture_loader)} steps; "
              f"{report['mixture']['flops_per_epoch'] / 1e12:.1f} TFLOP per epoch", flush=True)
    if device.type == "cuda":   # the new path (packed, grouped), on the model as trained above
        model.task_mix = "per_batch"
        try:
            per_step, where = host_syncs_per_step(trainer, batches["grouped"][:4], device)
            report["host_syncs_per_step"], report["host_sync_sources"] = per_step, where
        except RuntimeError as err:   # keep the timings even if the debug mode is unavailable
            report["host_syncs_error"] = repr(err)
    old = report["data_s_per_batch"]["recbole_loader"] + compute["per_task_random"]
    new = report["data_s_per_batch"]["device_loader"] + compute["packed_grouped"]
    report["epoch_s_estimate"] = {"old": old * len(train_data), "new": new * len(train_data)}
    report["speedup"] = old / new
    report["data_share_old"] = report["data_s_per_batch"]["recbole_loader"] / old
    if device.type == "cuda":
        report["max_memory_allocated_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
    write_report(report, args.out)


def write_report(report, out):
    print(json.dumps(report, indent=2))
    if out:
        os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
        write_json(out, report)


if __name__ == "__main__":
    main()
