"""README.md stays true: every setting documented, the two commands exist and CI runs the test one."""

import re

from aisha_infra.deploy.settings import SETTING_NAMES
from tests.project import PROJECT_ROOT

README = (PROJECT_ROOT / "README.md").read_text()


def test_every_setting_is_documented():
    missing = [name for name in SETTING_NAMES if f"`{name}`" not in README]
    assert not missing, f"README.md does not document: {missing}"


def test_the_two_commands_exist_and_ci_runs_the_test_one():
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    assert "make demo" in README and "make test" in README
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in (PROJECT_ROOT / ".ci/run").read_text()
