"""The semantic-ID pre-stage at catalogue scale: memory and time on random item views.

    python benchmarks/prestage_scale.py --items=100000,1000000 --epochs=2,1 --out=results/scale/prestage.json

Each size runs in its own process (so its peak memory is its own): two random 64-dim views, the
``macrec`` method with the released settings (``properties/semantic_ids.yaml``) except the epochs,
evaluated every epoch. Recorded: the set-up (pseudo-label and codebook k-means) seconds, the
seconds of each training epoch, the seconds of the code extraction and collision check, the
collision rates, and the process's peak resident memory.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

from recbole_macrec.results import machine_description



def one_size(n, epochs, method, dim=64, seed=0):
    import numpy as np
    import torch
    import yaml

    from recbole_macrec.quantization import train as train_module
    from recbole_macrec.quantization.train import QuantizerParams, train_quantizers
    from recbole_macrec.config import PROPERTIES_DIR

    settings = yaml.safe_load((PROPERTIES_DIR / "semantic_ids.yaml").read_text())
    params = QuantizerParams(**{k[4:]: tuple(v) if isinstance(v, list) else v for k, v in settings.items()
                                if k.startswith("sid_") and k[4:] in QuantizerParams.__dataclass_fields__})
    params.epochs, params.eval_step = epochs, 1
    rng = np.random.default_rng(seed)
    views = {"text": rng.normal(size=(n, dim)).astype(np.float32), "image": rng.normal(size=(n, dim)).astype(np.float32)}
    marks = {}
    original = train_module.build_models

    def timed_build(*args, **kwargs):   # set-up ends where the models are built (after pseudo-labels)
        marks["pseudo_labels_s"] = time.perf_counter() - marks["start"]
        return original(*args, **kwargs)

    train_module.build_models = timed_build
    marks["start"] = time.perf_counter()
    best = train_quantizers(views, method, params, seed, show_progress=False)
    total = time.perf_counter() - marks["start"]
    history = best["text"].history
    train_s = sum(h["epoch_s"] for h in history)
    return {"items": n, "method": method, "epochs": epochs, "torch_threads": torch.get_num_threads(),
            "pseudo_labels_s": round(marks["pseudo_labels_s"], 1),
            "epoch_s": [h["epoch_s"] for h in history],
            "other_s": round(total - marks["pseudo_labels_s"] - train_s, 1),
            "total_s": round(total, 1),
            "collision_rate": {v: best[v].rate for v in best},
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--items", default="100000,1000000")
    parser.add_argument("--epochs", default="2,1", help="epochs per size")
    parser.add_argument("--method", default="macrec")
    parser.add_argument("--out", default=None)
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one is not None:
        print(json.dumps(one_size(args.one, int(args.epochs), args.method)))
        return None
    rows = []
    for n, epochs in zip(args.items.split(","), args.epochs.split(",")):
        done = subprocess.run([sys.executable, os.path.abspath(__file__), f"--one={n}", f"--epochs={epochs}",
                               f"--method={args.method}"], capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{n} items failed:\n{done.stderr[-3000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    result = {"machine": machine_description(), "rows": rows}
    if args.out:
        from recbole_macrec.files import write_json

        write_json(args.out, result)   # (creates the folder)
    return result


if __name__ == "__main__":
    main()
