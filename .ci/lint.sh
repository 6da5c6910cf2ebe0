#!/usr/bin/env bash
# Lint policy, checked without changing any file:
#   ruff check           python/ tests/ bench/ tools/ setup.py   (rules: [tool.ruff] in pyproject.toml)
#   ruff format --check  the same paths
#   clang-format --dry-run -Werror   the C/C++ sources under ascend_c/ and csrc/ (style: .clang-format)
#   mypy                 python/longattn ([tool.mypy]; run with the current python, which needs torch)
# It installs its own pinned tools with pip (into .ci-cache/lint-tools, reused while the pins stay the
# same), so it needs only python3 and pip. All three checks run; the exit status is 1 if any failed.
# Same versions as .pre-commit-config.yaml. Run from anywhere: bash .ci/lint.sh
# To fix what it reports: ruff check --fix PATH; ruff format PATH; clang-format -i FILE.
set -uo pipefail
cd "$(dirname "$0")/.."

RUFF_VERSION=0.17.6
CLANG_FORMAT_VERSION=23.1.5
MYPY_VERSION=2.4.1
TOOLS="${LINT_TOOLS_DIR:-.ci-cache/lint-tools}"
case "$TOOLS" in /*) ;; *) TOOLS="$PWD/$TOOLS" ;; esac  # absolute: PYTHONPATH entries below
STAMP="$TOOLS/.installed-ruff-$RUFF_VERSION-clang-format-$CLANG_FORMAT_VERSION-mypy-$MYPY_VERSION"
if [ ! -f "$STAMP" ]; then
  rm -rf "$TOOLS"
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore --no-deps --target "$TOOLS" \
    "ruff==$RUFF_VERSION" "clang-format==$CLANG_FORMAT_VERSION" || { echo "lint: installing the tools failed" >&2; exit 2; }
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore --target "$TOOLS/mypy" \
    "mypy==$MYPY_VERSION" || { echo "lint: installing mypy failed" >&2; exit 2; }
  touch "$STAMP"
fi
RUFF="$TOOLS/bin/ruff"
CLANG_FORMAT="$TOOLS/clang_format/data/bin/clang-format"
for tool in "$RUFF" "$CLANG_FORMAT"; do
  [ -x "$tool" ] || { echo "lint: $tool is missing (delete $TOOLS and rerun)" >&2; exit 2; }
done

PY_PATHS=(python tests bench tools setup.py)
# The tracked C/C++ files (every C/C++ file when this is not a git checkout).
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  mapfile -t CXX_FILES < <(git ls-files -- 'ascend_c/*' 'csrc/*' | grep -E '\.(c|cc|cpp|cxx|h|hh|hpp)$')
else
  mapfile -t CXX_FILES < <(find ascend_c csrc -type f -regextype egrep -regex '.*\.(c|cc|cpp|cxx|h|hh|hpp)$' | sort)
fi

failed=()
echo "== ruff check ($("$RUFF" --version))"
"$RUFF" check "${PY_PATHS[@]}" || failed+=("ruff check")
echo "== ruff format --check"
"$RUFF" format --check "${PY_PATHS[@]}" || failed+=("ruff format")
echo "== clang-format --dry-run -Werror ($("$CLANG_FORMAT" --version | sed 's/.*version //'), ${#CXX_FILES[@]} files)"
if [ ${#CXX_FILES[@]} -gt 0 ]; then
  "$CLANG_FORMAT" --style=file --dry-run -Werror "${CXX_FILES[@]}" || failed+=("clang-format")
fi

echo "== mypy (type hints of the package)"
PYTHONPATH="$TOOLS/mypy:$PWD/python${PYTHONPATH:+:$PYTHONPATH}" python3 -m mypy || failed+=("mypy")

if [ ${#failed[@]} -gt 0 ]; then
  echo "lint: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "lint: ok"
