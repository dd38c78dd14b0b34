"""benchmarks/gpu_instruments.sh, run here on the CPU on a tiny source in the published layout."""
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_instruments.sh"


def _write_instruments_like_src(folder, n_users=24, n_items=20):
    """Users walk item indices upward; two views of unique published 4-token codes."""
    folder.mkdir(parents=True)
    sequences = {str(u): [(u + k) % n_items for k in range(5 + u % 3)] for u in range(n_users)}
    (folder / "Instruments.inter.json").write_text(json.dumps(sequences))
    (folder / "Instruments.item2id").write_text("".join(f"A{i}\t{i}\n" for i in range(n_items)))
    (folder / "Instruments.user2id").write_text("".join(f"U{u}\t{u}\n" for u in range(n_users)))
    for suffix, shift in (("lemb", 0), ("vitemb", 3)):
        codes = {str(i): [f"<a_{(i + shift) % 5}>", f"<b_{i // 5}>", f"<c_{(i * 7 + shift) % 4}>", f"<d_{i}>"]
                 for i in range(n_items)}
        (folder / f"Instruments.index_{suffix}.json").write_text(json.dumps(codes))


def _run_script(cwd, out, **env):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "SKIP_WHEELS": "1", "PROFILE": "0", **env}
    return subprocess.run(["bash", str(SCRIPT), str(out)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def _would_run(proc):
    return [line.split(": ", 1)[1] for line in proc.stdout.splitlines() if line.startswith("would run")]


def test_dry_run_schedules_budgets_and_fixed_epochs(workdir):
    _write_instruments_like_src(workdir / "src")
    proc = _run_script(workdir, workdir / "out", DRY_RUN="1", INSTRUMENTS_SRC=str(workdir / "src"),
                       MODELS="MACRec TIGER", GR_BUDGET_S="100", GR_BUDGET_S_TIGER="30", GR_BATCH="64")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _would_run(proc) == [
        "MACRec --gr_train_budget_s=100 --train_batch_size=64 --eval_batch_size=512",
        "TIGER --gr_train_budget_s=30 --train_batch_size=64 --eval_batch_size=512"]
    proc = _run_script(workdir, workdir / "out", DRY_RUN="1", INSTRUMENTS_SRC=str(workdir / "src"),
                       MODELS="MACRec MQL4GRec", GR_EPOCHS="3")
    assert _would_run(proc) == [f"{m} --epochs=3 --eval_step=3 --train_batch_size=4096 --eval_batch_size=512"
                                for m in ("MACRec", "MQL4GRec")]


def test_empty_models_runs_no_model(workdir):
    _write_instruments_like_src(workdir / "src")
    proc = _run_script(workdir, workdir / "out", DRY_RUN="1", INSTRUMENTS_SRC=str(workdir / "src"), MODELS="")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _would_run(proc) == []


def test_missing_source_stops_before_any_run(workdir):
    (workdir / "empty").mkdir()
    proc = _run_script(workdir, workdir / "out", DRY_RUN="1", INSTRUMENTS_SRC=str(workdir / "empty"))
    assert proc.returncode == 1
    assert "nothing was run" in proc.stdout
    assert _would_run(proc) == []


def test_budgeted_pair_trains_equal_epochs_and_bundles_runs(workdir):
    """MACRec plans its epochs from a budget, MQL4GRec then trains the same; both jsons are in
    runs.tgz and in the summary table."""
    _write_instruments_like_src(workdir / "src")
    proc = _run_script(workdir, workdir / "out", INSTRUMENTS_SRC=str(workdir / "src"), BUNDLE="1",
                       RUNS_DIR=str(workdir / "runs"), MODELS="MACRec MQL4GRec", GR_BUDGET_S="3",
                       GR_BATCH="32")
    log = (workdir / "out" / "log.txt").read_text()
    assert proc.returncode == 0, proc.stdout + proc.stderr + log[-3000:]
    runs = {}
    with tarfile.open(workdir / "out" / "runs.tgz") as tar:
        for member in tar.getmembers():
            if member.name.endswith(".json"):
                run = json.load(tar.extractfile(member))
                runs[run["model"]] = run
    assert set(runs) == {"MACRec", "MQL4GRec"}, log[-3000:]
    macrec, mql4grec = runs["MACRec"], runs["MQL4GRec"]
    assert macrec["train_budget"]["train_budget_s"] == 3
    assert "train_budget" not in mql4grec
    assert mql4grec["epochs"] == macrec["epochs"] == macrec["epochs_run"] == mql4grec["epochs_run"]
    summary = [line for line in proc.stdout.splitlines() if line.startswith(("MACRec |", "MQL4GRec |"))]
    assert [line.split(" | ")[1] for line in summary] == [f"{macrec['epochs']}/{macrec['epochs']}"] * 2
