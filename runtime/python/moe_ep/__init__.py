"""moe-ep from PyTorch: expert-parallel MoE layers over MPI.

Run under ``mpirun -np P /usr/bin/python3 script.py``. Importing this package initialises MPI once
per process (or reuses it when mpi4py or another library started it first) and finalises it at
exit if it started it.

An uncaught exception on one rank would leave the other ranks waiting in a collective, so the
package installs a ``sys.excepthook`` that, after printing the traceback, ends the whole job with
``MPI_Abort`` -- except for ``moe_ep.Error``, which the runtime raises on every rank together
(the ranks agreed on it first), so the processes exit normally with status 1.
"""
import sys as _sys

from ._moe_ep import (CommError, Communicator, Config, Error, ForwardContext, ParallelGroups,
                      abort, config_fields, world, world_size)
from .layer import MoELayer, make_config

__all__ = ["MoELayer", "make_config", "Config", "ParallelGroups", "Communicator", "ForwardContext",
           "Error", "CommError", "world", "abort", "config_fields"]


def _excepthook(kind, value, traceback):
    _sys.__excepthook__(kind, value, traceback)
    _sys.stderr.flush()
    if not issubclass(kind, Error) and world_size() > 1:
        abort(1)


_sys.excepthook = _excepthook
