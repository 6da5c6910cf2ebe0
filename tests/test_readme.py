"""The README's two set-up commands stay true: CI runs exactly the README's test command."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _commands():
    readme = (ROOT / "README.md").read_text()
    return re.findall(r"```bash\n(.+?)\n```", readme)


def test_readme_has_two_setup_commands_and_ci_runs_the_test_one():
    cmds = _commands()
    assert len(cmds) == 2, cmds
    main_job, tests = cmds
    assert "python -m bench" in main_job and "pytest tests" in tests
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert tests in ci, ".ci/run must run the README's test command verbatim"


def _python_blocks():
    return re.findall(r"```python\n(.+?)\n```", (ROOT / "README.md").read_text(), re.S)


@pytest.mark.parametrize("code", _python_blocks(), ids=lambda c: c.split("\n")[0][:40])
def test_readme_usage_example_runs(code):
    # A block that imports transformers (an optional extra) runs only where it is installed.
    if re.search(r"^\s*(from|import) transformers\b", code, re.M):
        pytest.importorskip("transformers", reason="transformers is not installed (pip install longattn[transformers])")
    exec(compile(code, "README.md", "exec"), {})
