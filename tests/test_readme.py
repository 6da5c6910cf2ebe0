"""The README's two set-up commands stay true: CI runs exactly the README's test command."""

import pathlib
import re

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


def test_readme_usage_example_runs():
    readme = (ROOT / "README.md").read_text()
    for code in re.findall(r"```python\n(.+?)\n```", readme, re.S):
        exec(compile(code, "README.md", "exec"), {})
