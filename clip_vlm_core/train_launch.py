"""How many processes a training run has, and `accelerate launch --num_processes N` made to mean N.

accelerate's launcher without a config file (`accelerate config`) starts N processes only where it sees
N GPUs, or when told `--multi_gpu`; elsewhere (a CPU-only machine, one GPU) it runs its "simple"
launcher: ONE process, with MASTER_ADDR/MASTER_PORT set and no RANK or WORLD_SIZE (meant for mpirun).
That process used to train alone, silently, as if N had never been asked for. `relaunch_if_accelerate_lost_processes`
recognises it, reads N (and the machines) from the `accelerate launch` command line that started it, and
replaces itself by PyTorch's own launcher (torch.distributed.run, what accelerate's `--multi_gpu` runs) with
the same arguments: N processes, DDP over gloo on CPU or NCCL on GPUs.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass

from clip_vlm_core.errors import UserError

log = logging.getLogger(__name__)

# Set by accelerate's launchers for the process they start: a mark that `accelerate launch` started us.
_ACCELERATE_MARK = "ACCELERATE_USE_CPU"
# What MPI launchers set: ranks that accelerate reads itself (its simple launcher with --mpirun_hostfile).
_MPI_SIZE = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE", "MPI_LOCALNRANKS")


@dataclass(frozen=True)
class LaunchRequest:
    """What an `accelerate launch` command line asked for (accelerate's own parser read it)."""

    num_processes: int  # in all, over every machine (accelerate's meaning)
    num_machines: int
    machine_rank: int
    main_process_ip: str
    main_process_port: int


def lost_processes() -> bool:
    """Whether this process was started by accelerate's single-process launcher although several processes
    (or machines) were asked for: that launcher sets MASTER_ADDR only then, and nothing set ranks."""
    env = os.environ
    return (_ACCELERATE_MARK in env and "MASTER_ADDR" in env and "WORLD_SIZE" not in env and "RANK" not in env
            and not any(name in env for name in _MPI_SIZE))


def read_launch_request(command: list[str]) -> LaunchRequest | None:
    """The process count, machines and rendezvous of an `accelerate launch ...` command line (as the parent
    process shows it: [python, .../accelerate, launch, ...]), or None when it is not one."""
    from accelerate.commands.launch import launch_command_parser

    for i, word in enumerate(command):
        name = os.path.basename(word)
        if name == "accelerate" and command[i + 1:i + 2] == ["launch"]:
            rest = command[i + 2:]
            break
        if name in ("accelerate-launch", "accelerate.commands.launch"):
            rest = command[i + 1:]
            break
    else:
        return None
    parser = launch_command_parser()
    try:
        args, _ = parser.parse_known_args(rest)
    except SystemExit:
        return None
    machines = args.num_machines or 1
    return LaunchRequest(num_processes=args.num_processes or 1, num_machines=machines, machine_rank=args.machine_rank or 0,
                         main_process_ip=args.main_process_ip or os.environ.get("MASTER_ADDR", "127.0.0.1"),
                         main_process_port=args.main_process_port or int(os.environ.get("MASTER_PORT", "29500")))


def torchrun_command(request: LaunchRequest, argv: list[str]) -> list[str]:
    """torch.distributed.run with `request`'s processes per machine, running clip-vlm with `argv`
    (sys.argv: `-m clip_vlm_core` shows as its __main__.py)."""
    if request.num_processes % request.num_machines:
        raise UserError(f"accelerate launch asked for --num_processes {request.num_processes} over --num_machines "
                        f"{request.num_machines}; give a total that every machine runs an equal share of")
    script = ["-m", "clip_vlm_core"] if os.path.basename(argv[0]) == "__main__.py" else [argv[0]]
    return [sys.executable, "-m", "torch.distributed.run",
            "--nproc_per_node", str(request.num_processes // request.num_machines),
            "--nnodes", str(request.num_machines), "--node_rank", str(request.machine_rank),
            "--master_addr", request.main_process_ip, "--master_port", str(request.main_process_port),
            *script, *argv[1:]]


def relaunch_if_accelerate_lost_processes() -> None:
    """Under `accelerate launch --num_processes N` (N > 1) run by its single-process launcher, replace this
    process by torch.distributed.run with N processes (this never returns then); otherwise do nothing."""
    if not lost_processes():
        return
    import psutil

    try:
        command = psutil.Process(os.getppid()).cmdline()
    except (psutil.Error, OSError):
        command = []
    request = read_launch_request(command)
    if request is None:
        raise UserError("accelerate launch started one process although several were asked for (its launcher "
                        "does so without GPUs or an `accelerate config`); add --multi_gpu to the accelerate launch "
                        "command, or use torchrun --nproc_per_node N")
    if request.num_processes <= 1 and request.num_machines <= 1:
        return
    per_machine = request.num_processes // max(request.num_machines, 1)
    import torch

    if torch.cuda.is_available() and os.environ.get(_ACCELERATE_MARK, "").lower() != "true" and \
            torch.cuda.device_count() < per_machine:
        raise UserError(f"accelerate launch asked for {per_machine} processes on this machine, which has "
                        f"{torch.cuda.device_count()} GPU(s); give --num_processes at most the GPUs, or --cpu")
    command = torchrun_command(request, sys.argv)
    log.info("accelerate launch ran one process for --num_processes %d; starting %d on this machine with "
             "torch.distributed.run", request.num_processes, per_machine)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, command)
