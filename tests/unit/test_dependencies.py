"""Declared dependencies are the imported ones: every module our code imports is the
standard library's, our own, or from a distribution pyproject.toml declares, and the
installed set is consistent (`pip check`)."""

import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib

import pytest

from tests.project import PROJECT_ROOT

# Ours: the package, the tests, and the bundled backend (tests import it from backend/).
OWN_TOP_LEVEL = {"aisha_infra", "tests", "aisha_webhook_api"}
# What runs on the control machine (the package, the play, the inventory); the bundled
# backend runs on the host with its own requirements.txt.
PACKAGE_SOURCES = ("aisha_infra", "tasks", "deploy.py", "rollback.py", "inventory.py")
TEST_SOURCES = ("tests", "bench")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_names(requirements: list[str]) -> set[str]:
    return {canonical(re.match(r"[A-Za-z0-9._-]+", requirement).group()) for requirement in requirements}


def declared(*extras: str) -> set[str]:
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    names = requirement_names(project["dependencies"])
    for extra in extras:
        names |= requirement_names(project["optional-dependencies"][extra])
    return names


def top_level_imports(*roots: str) -> dict[str, str]:
    """Top-level module imported -> the first file importing it (relative imports are ours)."""
    found: dict[str, str] = {}
    for root in roots:
        path = PROJECT_ROOT / root
        for source in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            for node in ast.walk(ast.parse(source.read_text(), str(source))):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level:
                    modules = [node.module]
                else:
                    continue
                for module in modules:
                    found.setdefault(module.split(".")[0], str(source.relative_to(PROJECT_ROOT)))
    return found


def undeclared(imports: dict[str, str], allowed: set[str]) -> list[str]:
    providers = importlib.metadata.packages_distributions()
    faults = []
    for module, where in sorted(imports.items()):
        if module in sys.stdlib_module_names or module in OWN_TOP_LEVEL:
            continue
        distributions = {canonical(name) for name in providers.get(module, [])}
        if not distributions:
            faults.append(f"{where}: imports {module!r}, which no installed distribution provides")
        elif not distributions & allowed:
            faults.append(f"{where}: imports {module!r} from {sorted(distributions)}, not declared in pyproject.toml")
    return faults


def test_the_package_imports_only_declared_dependencies():
    assert undeclared(top_level_imports(*PACKAGE_SOURCES), declared()) == []


def test_tests_import_only_declared_dependencies():
    assert undeclared(top_level_imports(*TEST_SOURCES), declared("test")) == []


def test_every_declared_dependency_is_imported():
    providers = importlib.metadata.packages_distributions()
    imported = {canonical(name) for module in top_level_imports(*PACKAGE_SOURCES) for name in providers.get(module, [])}
    assert declared() - imported == set()


def test_the_scan_sees_an_undeclared_import():
    imports = {"urllib3": "aisha_infra/checks/health.py", "json": "x.py", "aisha_infra": "y.py"}
    assert undeclared(imports, {"pyinfra"}) == [
        "aisha_infra/checks/health.py: imports 'urllib3' from ['urllib3'], not declared in pyproject.toml"
    ]
    assert undeclared({"no_such_module_anywhere": "z.py"}, set())[0].startswith("z.py: imports 'no_such_module")


def test_pip_check_is_clean():
    check = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.parametrize("requirement, name", [("Jinja2>=3.1", "jinja2"), ("pytest_testinfra>=10", "pytest-testinfra")])
def test_requirement_names_are_canonical(requirement, name):
    assert requirement_names([requirement]) == {name}
