"""torch.distributed for law_fast: one process without torchrun is unchanged; under ``torchrun``
(``WORLD_SIZE`` > 1 in the environment) the processes join one group — gloo on the CPU, NCCL on
GPUs — and the work that grows with the data is sharded, its sums all-reduced (docs/distributed.md).

Sharded: the covariance statistics (each process reads every ``world``-th document of the corpus;
Σkkᵀ and the token count are all-reduced, rank 0 writes the cache), the z* chunks (gathered), the key
moments of every layer (G, KᵀR, ‖R‖² all-reduced) and the elimination checks (verdicts gathered); the
λ search and the LaW solve run in every process on the same sums and rank 0's Δ is broadcast, so
every process holds the same model.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


def active() -> bool:
    """True inside a process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0 (or the only process): the one that writes shared files and shows progress."""
    return rank() == 0


def init_from_env(device: str | torch.device | None = None) -> bool:
    """Join the process group that torchrun describes (``WORLD_SIZE``, ``RANK``, ``MASTER_ADDR``,
    ``MASTER_PORT``; ``LOCAL_RANK`` picks the GPU): NCCL when ``device`` is CUDA, else gloo.  A no-op
    in one process or once joined; returns :func:`active`."""
    if dist.is_initialized():
        return active()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    cuda = device is not None and torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(torch.device(local_device(str(device))))
    dist.init_process_group("nccl" if cuda else "gloo")
    log.info("joined the process group: rank %d of %d (%s)", rank(), world_size(), dist.get_backend())
    return active()


def leave() -> bool:
    """Leave the process group: a barrier first, so no process exits while another still talks to it.
    Returns whether a group was left (False when none was joined).  A process that left must end with
    :func:`exit_now` rather than a normal interpreter exit (see there)."""
    if not dist.is_initialized():
        return False
    dist.barrier()
    dist.destroy_process_group()
    return True


def exit_now(code: int) -> None:
    """End a process that has left its group at once, without the interpreter's finalisation: gloo's
    worker threads can still be dropping the last collectives' works after the barrier, and a work
    that holds a tensor with a Python object (``all_gather_object``'s) takes the GIL to free it — during
    finalisation that ends the thread and aborts the process ("terminate called without an active
    exception", SIGABRT; seen in ~1 of 6 two-process washes: a core dump shows
    ``~AsyncBarrierWork`` → ``~AsyncAllgatherWork`` → ``THPVariable_clear`` → ``take_gil`` →
    ``pthread_exit``).  Every output is written and closed by then; stdout, stderr and the logs are
    flushed here."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def local_device(device: str | None) -> str | None:
    """Under torchrun a bare "cuda" is this process's GPU (``cuda:LOCAL_RANK``); anything else as given."""
    if device == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def shard(items: Sequence) -> list:
    """This process's share of ``items``: every ``world``-th one from its rank (all of them in one process)."""
    return list(items[rank() :: world_size()]) if active() else list(items)


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over the processes, in place (nothing in one process)."""
    if active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def union(items) -> list:
    """The sorted union of every process's ``items`` (the same list everywhere), for decisions all
    processes must take together (e.g. which layers are still to compute)."""
    if not active():
        return sorted(items)
    gathered: list = [None] * world_size()
    dist.all_gather_object(gathered, sorted(items))
    return sorted(set().union(*gathered))


def map_sharded(fn, items: Sequence) -> list:
    """``fn(items)`` (a list of one result per item) with each process doing its share (:func:`shard`)
    and every process getting all results, in order."""
    if not active():
        return list(fn(list(items)))
    mine = list(range(rank(), len(items), world_size()))
    local = list(fn([items[i] for i in mine])) if mine else []
    if len(local) != len(mine):
        raise RuntimeError(f"map_sharded: {len(local)} results for {len(mine)} items")
    gathered: list = [None] * world_size()
    dist.all_gather_object(gathered, list(zip(mine, local)))
    out: list = [None] * len(items)
    for part in gathered:
        for i, value in part:
            out[i] = value
    return out


def gather_dict(local: dict) -> dict:
    """The union of every process's ``local`` dict (keys disjoint; values picklable — tensors on the CPU)."""
    if not active():
        return dict(local)
    gathered: list = [None] * world_size()
    dist.all_gather_object(gathered, local)
    out: dict = {}
    for part in gathered:
        out.update(part)
    return out


def broadcast_(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Every process gets rank ``src``'s ``tensor`` (in place; nothing in one process)."""
    if active():
        if tensor.is_contiguous():
            dist.broadcast(tensor, src=src)
        else:  # the collectives need contiguous memory
            buffer = tensor.contiguous()
            dist.broadcast(buffer, src=src)
            tensor.copy_(buffer)
    return tensor


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s ``obj`` in every process."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
