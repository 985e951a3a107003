"""pyinfra orders a deploy's operations by the line numbers of the calls that added them:
for every operation of every host, `pyinfra.api.util.get_operation_order_from_stack` walks
the stack with `inspect.stack()` and `getframeinfo()`, which find and read the source lines
of every frame. It uses only each frame's file name and line number, which context 0 gives
without reading any source: ~4 ms less per operation (53 a host: 0.2 s a host, the largest
part of preparing a no-op). The order is the same (tests/unit/test_operation_order.py,
which also fails if pyinfra stops looking the stack up through these two names)."""

from __future__ import annotations

import inspect
from functools import partial

from pyinfra.api import util


def order_operations_without_source() -> None:
    """Let pyinfra find the calling lines without reading source files. Partials: a
    function of ours would be one more frame on the stack pyinfra reads."""
    util.stack, util.getframeinfo = partial(inspect.stack, 0), partial(inspect.getframeinfo, context=0)
