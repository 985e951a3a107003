"""The layout shows the architecture: the deploy library and the operator tools never
import the lab (test hosts), and the deploy library never imports the tools."""

import ast

import pytest

from tests.project import PROJECT_ROOT


def imported_modules(path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module


def sources(*roots):
    for root in roots:
        path = PROJECT_ROOT / root
        yield from sorted(path.rglob("*.py")) if path.is_dir() else [path]


@pytest.mark.parametrize("roots, forbidden", [
    (("aisha_infra/deploy", "aisha_infra/tools", "tasks", "deploy.py", "rollback.py"), "aisha_infra.lab"),
    (("aisha_infra/deploy", "tasks", "deploy.py", "rollback.py"), "aisha_infra.tools"),
])
def test_production_code_does_not_import(roots, forbidden):
    offenders = [
        f"{path.relative_to(PROJECT_ROOT)}: {module}"
        for path in sources(*roots)
        for module in imported_modules(path)
        if module == forbidden or module.startswith(forbidden + ".")
    ]
    assert not offenders, offenders
