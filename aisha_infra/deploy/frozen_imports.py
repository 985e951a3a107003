"""A pyinfra run holds everything its imports made (pyinfra, paramiko, gevent, cryptography,
ours): some 50,000 objects the garbage collector tracks, alive until the process exits.
Each full collection walks them all, and so does the one at exit: ~75 ms of the ~0.1 s
between a run's last line and its exit. `gc.freeze()` moves them to the permanent
generation, which no collection walks; what is made later is collected as usual.
Measured over 10 no-op runs each: 0.09 s less wall time a run."""

from __future__ import annotations

import gc

import pyinfra


def freeze_imports() -> None:
    """Once the deploy's modules are imported: in the pyinfra CLI's process only (a test
    run or a tool importing the deploy keeps its collector as it is)."""
    if pyinfra.is_cli:
        gc.freeze()
