"""The ``xpcnn`` command line: one module per subcommand, one registry.

Each subcommand is a module of this package with ``add_parser(subparsers)``
(adds its parser and returns it) and ``run(args) -> int`` (the exit status),
listed once in :data:`COMMANDS`, from which the parser and the dispatch are built.
A module that sets ``EVERY_RANK = True`` runs on every rank of an MPI job
(``train``); the others run on rank 0 alone. The work is done by library calls
(``xpcnn.run.run_training`` for ``train``); this package parses options and
reports errors.

Every expected failure (an :class:`~xpcnn.errors.XpcnnError`: a bad option, no
CuPy/GPU, missing or damaged data, a checkpoint that does not fit, an unwritable
output folder; or an ``OSError`` of the environment) ends as one line on stderr
and a non-zero exit status; anything else is a bug and keeps its traceback.

Under ``mpiexec -n N`` (N > 1) ``train`` runs data-parallel (``xpcnn.distributed``):
rank 0 alone prints and writes; an error on one rank ends the whole job.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from types import ModuleType

from .._fast import compiled
from ..distributed import MPICommunicator, abort_on_exception, get_communicator
from ..errors import XpcnnError
from . import evaluate, export, info, predict, train, visualize

__all__ = ["COMMANDS", "build_parser", "main"]

#: The subcommands, in the order ``xpcnn --help`` lists them.
COMMANDS: tuple[ModuleType, ...] = (train, evaluate, visualize, predict, export, info)

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xpcnn",
        description="Convolutional networks from 'Deep Learning from Scratch' ch. 7 on NumPy, "
        "CuPy or any array-API library (--backend).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub).set_defaults(module=command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``xpcnn`` console script; returns the exit status.

    Under ``mpiexec -n N`` (N > 1), an error on one rank alone ends the whole job
    (``MPI_Abort``, also for a bug's traceback) so that no rank waits forever; errors
    raised on every rank at once (different options, divergence) are reported by rank 0
    and end each rank normally.
    """
    args = build_parser().parse_args(argv)
    try:
        comm = get_communicator()
    except XpcnnError as exc:  # launched by mpiexec without mpi4py
        print(f"xpcnn {args.command}: error: {exc}", file=sys.stderr)
        return exc.status
    with abort_on_exception(comm):
        status, everywhere = _run(args, comm.rank, comm.size)
        if status != 0 and isinstance(comm, MPICommunicator) and comm.size > 1 and not everywhere:
            comm.abort(status)
    return status


def _run(args: argparse.Namespace, rank: int, size: int) -> tuple[int, bool]:
    """Run a command: ``(exit status, whether every rank ends with it)``."""
    where = f" (rank {rank} of {size})" if size > 1 else ""
    if rank != 0 and not getattr(args.module, "EVERY_RANK", False):
        return 0, True  # one report, not one per rank
    try:
        if args.module is not info:  # info reports a bad setting in its listing
            compiled.check_environment()
        return args.module.run(args), True
    except (XpcnnError, OSError) as exc:  # OSError: the environment's (permissions, a full disk)
        collective = getattr(exc, "collective", False)
        if rank == 0 or not collective:
            print(
                f"xpcnn {args.command}: error{'' if collective else where}: {exc}", file=sys.stderr
            )
        return getattr(exc, "status", EXIT_ERROR), collective
    except KeyboardInterrupt:
        print(f"xpcnn {args.command}: interrupted{where}", file=sys.stderr)
        return EXIT_INTERRUPTED, False
