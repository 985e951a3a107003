"""aisha_infra/deploy/operation_order.py: pyinfra orders operations by the same lines
without reading source files."""

from __future__ import annotations

import inspect
from types import SimpleNamespace

from pyinfra.api import util

from aisha_infra.deploy.operation_order import order_operations_without_source


def called_from_a_deploy(state):
    return util.get_operation_order_from_stack(state)


def test_operations_keep_pyinfras_order(monkeypatch):
    # pyinfra looks the stack up through these two names: if that changes, the speed-up is gone.
    assert "from inspect import getframeinfo, stack\n" in inspect.getsource(util)
    assert "stack()" in inspect.getsource(util.get_operation_order_from_stack)
    monkeypatch.setattr(util, "stack", inspect.stack)  # pyinfra's own (an in-process deploy may have run)
    monkeypatch.setattr(util, "getframeinfo", inspect.getframeinfo)
    state = SimpleNamespace(current_deploy_filename=__file__, current_op_file_number=0)
    orders = []
    for cheap in (False, True):
        if cheap:
            order_operations_without_source()
        orders.append(called_from_a_deploy(state))
    assert orders[0] == orders[1] and len(orders[0]) >= 2
    assert util.stack is not inspect.stack
