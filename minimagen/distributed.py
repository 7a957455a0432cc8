"""Training on several GPUs or machines: PyTorch's DistributedDataParallel (DDP), launched by `torchrun`.

    torchrun --nproc_per_node 8 train_small.py --preset gpu                      # one machine, 8 GPUs
    torchrun --nnodes 2 --node_rank 0 --master_addr HOST0 --master_port 29500 \\
             --nproc_per_node 8 train_small.py --preset gpu                      # machine 0 of 2 (1 on the other)

Data parallelism in four lines. Every rank (process) holds the whole U-Net. For each optimizer step:
  1. a `DistributedSampler` (same seed and epoch on every rank, so the same permutation) gives rank r the
     rows r, r+N, r+2N, ... of the global batch of B items (B/N rows per rank);
  2. each rank runs forward + backward on its rows; DDP averages the gradients over the ranks during
     backward (an all-reduce), so every rank ends up with the gradient of the whole batch's mean loss;
  3. every rank makes the same AdamW step and the same EMA update: the weights never diverge;
  4. only rank 0 writes checkpoints, samples and logs; all ranks resume from the same checkpoint.
The random draws of a step (timesteps, noise, caption dropout) are made for the whole global batch and
sliced the same way (see `Trainer.train_step`), so N ranks compute the step one process would compute on
the whole batch, up to the order of floating-point sums.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; `init_distributed` reads them.
Backend: NCCL between GPUs, gloo on CPUs (the tests run 2 CPU processes with gloo).

Contents: `DistInfo`, `init_distributed`, `cleanup`, `rank_and_world_size`, `barrier`, `mean_over_ranks`,
`true_on_every_rank`, `any_rank`, `StageSampler`, `CtrlC` (Ctrl-C agreed by every rank).
"""
from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    device: torch.device  # this rank's device (cuda:LOCAL_RANK on a GPU machine)
    rank: int = 0         # 0 .. world_size-1 over all machines; rank 0 writes files and logs
    world_size: int = 1   # number of processes in the job
    local_rank: int = 0   # index of this process on its machine (= its GPU)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str | torch.device | None = None) -> DistInfo:
    """Join the job started by torchrun (if any) and pick this rank's device.

    Without torchrun (no WORLD_SIZE in the environment, or WORLD_SIZE=1) nothing is initialised: one process,
    `device` or cuda if available else cpu. Under torchrun: process group with NCCL for GPUs, gloo for CPU;
    rank r uses cuda:LOCAL_RANK (a bare "cuda" means that too).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} was asked for, but this PyTorch sees no CUDA GPU "
                         f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); use device='cpu', "
                         "or install the CUDA build of PyTorch for your GPU (pytorch.org)")
    if world_size == 1:
        return DistInfo(device=device)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", local_rank)  # one GPU per process
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise ValueError(f"distributed training runs on cuda (NCCL) or cpu (gloo), not {device.type}")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")  # env:// from torchrun
    return DistInfo(device=device, rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank)


def cleanup() -> None:
    """Leave the process group (call once at the end of a torchrun job; no-op otherwise)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank_and_world_size() -> tuple[int, int]:
    """(rank, world_size) of the current process group, or (0, 1) when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    """Wait until every rank gets here (no-op in a single process)."""
    if rank_and_world_size()[1] > 1:
        dist.barrier()


def _reduce(value: float, op, device: torch.device) -> float:
    if rank_and_world_size()[1] == 1:
        return value
    device = device if dist.get_backend() == "nccl" else torch.device("cpu")  # NCCL reduces GPU tensors only
    buf = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(buf, op=op)
    return buf.item()


def mean_over_ranks(value: float, device: torch.device) -> float:
    """The mean of a number over all ranks (e.g. each rank's loss -> the global batch's loss)."""
    return _reduce(value, dist.ReduceOp.SUM, device) / rank_and_world_size()[1]


def true_on_every_rank(flag: bool, device: torch.device) -> bool:
    """True only if `flag` is True on all ranks (so every rank takes the same branch, e.g. on a NaN loss)."""
    return _reduce(float(flag), dist.ReduceOp.MIN, device) > 0.5


def any_rank(flag: bool, device: torch.device) -> bool:
    """True if `flag` is True on some rank (e.g. Ctrl-C seen by one process stops them all at the same step)."""
    return _reduce(float(flag), dist.ReduceOp.MAX, device) > 0.5


class StageSampler:
    """The dataset rows each optimizer step of one stage trains on, for this rank.

    A `torch.utils.data.DistributedSampler` over the N items: each epoch is a fresh permutation (seeded by
    seed, stage and epoch, identical on every rank), cut into global batches of `batch_size`; rank r takes
    every world_size-th row of each batch. Stateless in the step number, so a resumed run (on any number of
    ranks) continues with exactly the rows it would have seen.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int = 0, stage: int = 0,
                 rank: int | None = None, world_size: int | None = None):
        if rank is None or world_size is None:
            rank, world_size = rank_and_world_size()
        if batch_size % world_size:
            raise ValueError(f"batch_size ({batch_size}, the global batch) must be divisible by the number of "
                             f"processes ({world_size}): each rank trains on batch_size / {world_size} items")
        if num_items < batch_size:
            raise ValueError(f"the dataset has {num_items} items, fewer than one batch of {batch_size}; "
                             "lower --batch-size or add data")
        self.local_batch_size = batch_size // world_size
        self.sampler = DistributedSampler(range(num_items), num_replicas=world_size, rank=rank, shuffle=True,
                                          seed=(seed * 1_000_003 + stage) * 1_000_033, drop_last=True)
        self.steps_per_epoch = len(self.sampler) // self.local_batch_size  # = num_items // batch_size
        self._epoch, self._order = -1, []

    def indices(self, step: int) -> torch.Tensor:
        """[batch_size / world_size] long: this rank's rows of global batch number `step`."""
        epoch, k = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self.sampler.set_epoch(epoch)  # the permutation of this epoch (same on every rank)
            self._epoch, self._order = epoch, list(self.sampler)
        b = self.local_batch_size
        return torch.tensor(self._order[k * b:(k + 1) * b], dtype=torch.long)


class CtrlC:
    """Ctrl-C as a request to stop after the current step, agreed by every rank (so all save the same step).

    `stop.requested(device)` is True on every rank once any rank saw Ctrl-C. The first Ctrl-C only sets the flag;
    in a single process a second one aborts at once (KeyboardInterrupt). Under torchrun the terminal's Ctrl-C and
    torchrun's forwarded one both arrive: the second is ignored, torchrun's own timeout still applies.
    """

    def __init__(self, is_main: bool = True, world_size: int = 1):
        self.seen, self.is_main, self.world_size = False, is_main, world_size
        signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigint(self, signum, frame) -> None:
        if self.seen:
            return
        self.seen = True
        if not self.is_main:
            return
        again = "torchrun stops the job if it takes too long" if self.world_size > 1 else "Ctrl-C again aborts without saving"
        print(f"\nCtrl-C: finishing this step, then saving a checkpoint ({again})", file=sys.stderr, flush=True)
        if self.world_size == 1:
            signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C raises KeyboardInterrupt

    def requested(self, device: torch.device) -> bool:
        self.seen = any_rank(self.seen, device)  # every rank stops after the same step
        return self.seen

    @staticmethod
    def restore() -> None:
        """Back to Python's default: Ctrl-C raises KeyboardInterrupt (e.g. once training is saved)."""
        signal.signal(signal.SIGINT, signal.default_int_handler)
