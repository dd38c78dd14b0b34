"""Several processes (torch DDP through RecBole's flags): the global rank, the order in which the
processes do what only one may do, the launch of ``nproc`` processes on this machine, and the
settings they cannot use, named before any process starts."""
import contextlib

import torch

from recbole_macrec.errors import SettingError


def global_rank(config):
    """This process's rank among all processes of the run (0 for a single process): its rank on
    this machine plus the number of processes on the machines before it (``offset``)."""
    if config["single_spec"] is not False:
        return 0
    return int(config["local_rank"]) + int(config["offset"] or 0)


def world_size(config):
    return 1 if config["single_spec"] is not False else int(config["world_size"])


@contextlib.contextmanager
def first_rank_first(config):
    """With several processes, rank 0 runs the block before every other rank."""
    import torch.distributed as dist

    distributed = config["single_spec"] is False
    if distributed and global_rank(config) != 0:
        dist.barrier()
    yield
    if distributed and global_rank(config) == 0:
        dist.barrier()


def load_best_everywhere(trainer):
    """Rank 0 (the one that saved it) loads the best checkpoint and every rank takes its weights,
    so that all test the same model (the others' checkpoint names differ)."""
    import torch.distributed as dist

    import recbole.trainer.trainer as trainer_module

    if global_rank(trainer.config) == 0:   # RecBole's trainer's view of torch trusts what it saved
        state = trainer_module.torch.load(trainer.saved_model_file, map_location=trainer.device)
        trainer.model.load_state_dict(state["state_dict"])
        trainer.model.load_other_parameter(state.get("other_parameter"))
    for tensor in trainer.model.state_dict().values():
        dist.broadcast(tensor, src=0)


def end_process_group(config):
    if config["single_spec"] is False:
        import torch.distributed as dist

        dist.destroy_process_group()


def check_distributed(config, nproc, world, ip, port, group_offset):
    """Settings several processes cannot use, named before any process starts: a batch the
    processes cannot share equally, more processes than GPUs, a port already in use."""
    import socket

    batch = int(config["train_batch_size"])
    if batch % world:
        raise SettingError(f"train_batch_size={batch} is not a multiple of the world size {world}: "
                           f"every process takes an equal share of each batch")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() and config["use_gpu"] else 0
    if gpus and (config["ddp_backend"] or "nccl") == "nccl" and nproc > gpus:
        raise SettingError(f"--nproc={nproc} exceeds the {gpus} GPUs of this machine")
    if group_offset == 0:   # the first node serves the rendezvous on ip:port
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((ip, int(port)))
            except OSError as err:
                raise SettingError(f"--port={port} on {ip} cannot be used ({err.strerror}): choose another") from err


def _worker(rank, run_one, args):
    model, dataset, config_file_list, config_dict, saved, queue = args
    run_one(model, dataset, config_file_list, {**config_dict, "local_rank": rank}, saved, queue)


def launch(run_one, model, dataset, config_file_list, config_dict, saved, nproc, world, ip, port, group_offset):
    """Run ``run_one(model, dataset, config_file_list, config_dict, saved, queue)`` in ``nproc``
    processes of this machine (ranks ``group_offset ...``); returns what rank 0 put in ``queue``."""
    import torch.multiprocessing as mp

    queue = mp.get_context("spawn").SimpleQueue()
    config_dict = {**(config_dict or {}), "world_size": world, "ip": ip, "port": port, "nproc": nproc,
                   "offset": group_offset}
    mp.spawn(_worker, args=(run_one, (model, dataset, config_file_list, config_dict, saved, queue)),
             nprocs=nproc, join=True)
    return None if queue.empty() else queue.get()


def share_cores(nproc):
    """Give this process ``cores // nproc`` torch threads (at least 1) when ``nproc`` CPU processes
    share the machine, unless the user set ``OMP_NUM_THREADS``: each process would otherwise start
    as many threads as there are cores, and two processes on two cores slowed each other ~16x.
    Returns what was done, for the log."""
    import os

    cores = os.cpu_count() or 1
    if os.environ.get("OMP_NUM_THREADS"):
        return f"{torch.get_num_threads()} threads (OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}, as set)"
    threads = max(1, cores // max(1, nproc))
    torch.set_num_threads(threads)
    return f"{threads} threads: {cores} cores shared by {nproc} processes (set OMP_NUM_THREADS to choose)"
