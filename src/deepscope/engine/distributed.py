"""Training in several processes (GPUs, computers) with Lightning's DDP strategy.

Three ways start such a training, and all run the same command in every process:

- ``deepscope train ... --devices N`` on one computer: Lightning starts N - 1 more
  processes running the same command (one per GPU; on a computer without GPU, N
  processes share the CPU cores, which is for testing, not speed);
- ``torchrun --nproc_per_node N -m deepscope train ...`` (any number of computers);
- ``srun deepscope train ...`` inside a SLURM allocation with several tasks.

The processes are counted from what torchrun or SLURM set, so ``--devices`` and
``--nodes`` need not be given then. Only the main process (rank 0) writes the run
folder, prints progress and makes the model folder; the others train and leave.
"""

from __future__ import annotations

import os
import re

from deepscope.errors import DeepscopeError


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "")
    match = re.match(r"\d+", value)  # SLURM writes e.g. "2(x3)"
    return int(match.group()) if match else None


def launched_processes() -> tuple[int, int] | None:
    """``(processes per computer, computers)`` when torchrun or SLURM started this one.

    None for an ordinary command (one process, or Lightning's own launcher).
    """
    if "TORCHELASTIC_RUN_ID" in os.environ or (
        "LOCAL_WORLD_SIZE" in os.environ and "RANK" in os.environ
    ):
        local = _env_int("LOCAL_WORLD_SIZE") or 1
        world = _env_int("WORLD_SIZE") or local
        return local, max(1, world // local)
    tasks = _env_int("SLURM_NTASKS")
    if tasks and tasks > 1 and "SLURM_PROCID" in os.environ:
        nodes = _env_int("SLURM_NNODES") or 1
        per_node = _env_int("SLURM_NTASKS_PER_NODE") or max(1, tasks // nodes)
        return per_node, nodes
    return None


def is_main_process() -> bool:
    """Whether this is rank 0 of its training (always True for a one-process training)."""
    for name in ("RANK", "LOCAL_RANK", "NODE_RANK"):
        if os.environ.get(name, "0") != "0":
            return False
    if launched_processes() is not None and "SLURM_PROCID" in os.environ:
        return os.environ["SLURM_PROCID"] == "0"
    return True


def process_layout(devices: int | None, nodes: int | None, gpus: int) -> tuple[int, int]:
    """Return ``(processes per computer, computers)`` for ``--devices`` and ``--nodes``.

    ``gpus`` is the number of GPUs of this computer (0 without).

    Raises
    ------
    DeepscopeError
        When the numbers contradict how the processes were started, ask for more GPUs
        than there are, or ask for several computers without torchrun or SLURM.
    """
    for name, value in (("--devices", devices), ("--nodes", nodes)):
        if value is not None and value < 1:
            raise DeepscopeError(f"{name} {value} must be at least 1", fix=f"give e.g. {name} 2")
    launched = launched_processes()
    if launched is not None:
        per_node, computers = launched
        if devices not in (None, per_node) or nodes not in (None, computers):
            raise DeepscopeError(
                f"torchrun or SLURM started {per_node} process(es) on each of {computers} "
                f"computer(s), but --devices {devices} / --nodes {nodes} were asked for",
                fix="leave out --devices and --nodes (they are read from torchrun or SLURM)",
            )
        return per_node, computers
    devices = devices or 1
    if (nodes or 1) > 1:
        raise DeepscopeError(
            f"training on {nodes} computers needs a process started on each of them",
            fix="start the command with srun (SLURM) or torchrun on every computer; the "
            "number of computers is then read from there (leave out --nodes)",
        )
    if gpus and devices > gpus:
        raise DeepscopeError(
            f"--devices {devices} asks for more GPUs than this computer has ({gpus})",
            fix=f"give --devices {gpus} or fewer",
        )
    return devices, 1
