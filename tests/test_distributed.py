"""Several processes on the CPU (gloo): training stays in step, evaluation counts every user once."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT, TINY_T5, tiny_config_dict, write_codes

SMALL_SASREC = dict(hidden_size=16, inner_size=16, n_layers=1, n_heads=1)
LOAD_COL = "--load_col={'inter':['user_id','item_id','timestamp']}"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_worker(rank, model_name, cfg, out):
    """One rank of a 2-process run through the runner; saves its weights right after training."""
    import recbole_macrec  # noqa: F401
    from recbole_macrec import quick_start

    def capturing(model_type, name):
        trainer_class = quick_start_get_trainer(model_type, name)

        class Capturing(trainer_class):
            def fit(self, *args, **kwargs):
                result = super().fit(*args, **kwargs)
                torch.save({k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                           os.path.join(out, f"weights{rank}.pt"))
                return result

        return Capturing

    quick_start_get_trainer = quick_start.get_trainer
    quick_start.get_trainer = capturing
    result = quick_start.run_recbole(model_name, "tiny", config_dict={**cfg, "local_rank": rank})
    if rank == 0:
        with open(os.path.join(out, "result.json"), "w") as f:
            json.dump(result, f)


def _two_processes(model_name, cfg, out):
    import torch.multiprocessing as mp

    cfg = {**cfg, "world_size": 2, "nproc": 2, "ip": "127.0.0.1", "port": free_port(), "offset": 0,
           "results_dir": str(out)}
    mp.spawn(_rank_worker, args=(model_name, cfg, str(out)), nprocs=2, join=True)
    return json.loads((out / "result.json").read_text())


@pytest.mark.parametrize("model_name", ["SASRec", "TIGER"])
def test_two_cpu_processes_train_in_step_and_evaluate_every_user_once(tiny_dataset, workdir, model_name):
    from recbole_macrec.quick_start import build_run
    from recbole_macrec.registry import get_trainer

    extra = SMALL_SASREC if model_name == "SASRec" else TINY_T5
    if model_name == "TIGER":
        write_codes(tiny_dataset / "tiny")
    cfg = tiny_config_dict(tiny_dataset, **{**extra, "epochs": 2, "train_batch_size": 32, "eval_batch_size": 7})
    out = workdir / "ddp"
    out.mkdir()
    result = _two_processes(model_name, cfg, out)
    ranks = [torch.load(out / f"weights{r}.pt") for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys()
    for name in ranks[0]:
        torch.testing.assert_close(ranks[0][name], ranks[1][name], rtol=0, atol=0, msg=name)
    # every test user once: 40 users over 2 ranks in batches of 7 (RecBole's sampler pads shards)
    saved = np.load(result["result_file"][: -len(".json")] + ".ranks.npz")
    assert len(saved["users"]) == len(set(saved["users"].tolist())) == 40
    # the distributed test result equals one process evaluating the same (best) weights
    config, _, (_, _, test_data), model, *_ = build_run(model_name, "tiny", config_dict={**cfg, "results_dir": str(out)})
    [checkpoint] = [p for p in (workdir / "saved").glob(f"{model_name}-*.pth")   # only rank 0 saves
                    if not p.name.endswith(".state.pth")]
    model.load_state_dict(torch.load(checkpoint, weights_only=False)["state_dict"])
    single = get_trainer(config["MODEL_TYPE"], config["model"])(config, model).evaluate(test_data, load_best_model=False)
    for metric, value in result["test_result"].items():
        assert float(single[metric]) == pytest.approx(value, abs=1e-9), metric


def _script(*args, cwd, timeout=600):
    return subprocess.run([sys.executable, str(ROOT / "run_recbole.py"), *args], capture_output=True,
                          text=True, cwd=cwd, timeout=timeout)


@pytest.mark.parametrize("model_name", ["SASRec", "TIGER"])
def test_run_recbole_nproc_2_on_the_cpu(tiny_dataset, workdir, model_name):
    base = [f"--data_path={tiny_dataset}", "--dataset=tiny", "--epochs=1", "--state=WARNING",
            "--show_progress=False", f"--port={free_port()}", "--train_batch_size=32"]
    if model_name == "SASRec":
        base += [LOAD_COL, "--hidden_size=16", "--inner_size=16", "--n_layers=1", "--n_heads=1"]
    else:   # the rqvae pre-stage runs once, on rank 0, before the other rank reads it
        base += ["--sid_method=rqvae", "--sid_views=[text]", "--text_view_fields=[title,class]",
                 "--load_col={'inter':['user_id','item_id','timestamp'],'item':['item_id','title','class']}",
                 "--sid_num_levels=3", "--sid_codebook_size=4", "--sid_e_dim=8", "--sid_encoder_layers=[16]",
                 "--sid_epochs=2", "--sid_batch_size=16", "--sid_kmeans_iters=10", "--view_dim=8",
                 "--d_model=16", "--d_kv=8", "--d_ff=32", "--num_layers=1", "--num_decoder_layers=1",
                 "--num_heads=2", "--eval_batch_size=16"]
    done = _script(f"--model={model_name}", "--nproc=2", *base, cwd=workdir)
    assert done.returncode == 0, done.stderr[-3000:]
    files = list((workdir / "saved" / "results").glob(f"{model_name}-tiny-*.json"))
    assert len(files) == 1, "only global rank 0 writes the result"
    assert 0 <= json.loads(files[0].read_text())["test_result"]["ndcg@10"] <= 1
    if model_name == "TIGER":
        assert len([p for p in os.listdir(tiny_dataset / "tiny") if p.startswith("sid-")]) == 1


def test_bad_distributed_settings_are_named_before_any_process_starts(tiny_dataset, workdir):
    base = [f"--data_path={tiny_dataset}", "--dataset=tiny", "--model=SASRec", "--state=WARNING"]
    done = _script("--nproc=2", *base, "--train_batch_size=33", f"--port={free_port()}", cwd=workdir)
    assert done.returncode != 0 and "train_batch_size=33 is not a multiple of the world size 2" in done.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = _script("--nproc=2", *base, "--ip=127.0.0.1", f"--port={port}", cwd=workdir)
    assert done.returncode != 0 and f"--port={port} on 127.0.0.1 cannot be used" in done.stderr
    assert "Traceback" not in done.stderr


def test_two_nodes_of_one_process_each_on_localhost(tiny_dataset, workdir):
    """Multi-node, as two machines would run it: world size 2, one process per node, node 1 with
    group offset 1, both pointing at node 0's address and port."""
    port = free_port()
    base = [f"--data_path={tiny_dataset}", "--dataset=tiny", "--model=SASRec", "--epochs=1", "--state=WARNING", LOAD_COL,
            "--show_progress=False", "--train_batch_size=32", "--hidden_size=16", "--inner_size=16",
            "--n_layers=1", "--n_heads=1", "--nproc=1", "--world_size=2", "--ip=127.0.0.1", f"--port={port}"]
    for offset in (0, 1):
        (workdir / f"node{offset}").mkdir()
    nodes = [subprocess.Popen([sys.executable, str(ROOT / "run_recbole.py"), *base, f"--group_offset={offset}"],
                              cwd=workdir / f"node{offset}", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for offset in (0, 1)]
    outs = [node.communicate(timeout=600) for node in nodes]
    assert all(node.returncode == 0 for node in nodes), [o[1][-2000:] for o in outs]
    assert len(list((workdir / "node0" / "saved" / "results").glob("*.json"))) == 1
    assert not (workdir / "node1" / "saved" / "results").exists()


def test_cpu_processes_share_the_cores_unless_the_user_set_threads(monkeypatch):
    import torch

    from recbole_macrec.distributed import share_cores

    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        said = share_cores(2)
        assert torch.get_num_threads() == max(1, (os.cpu_count() or 1) // 2)
        assert "shared by 2 processes" in said
        torch.set_num_threads(before)
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert "as set" in share_cores(2) and torch.get_num_threads() == before
    finally:
        torch.set_num_threads(before)
