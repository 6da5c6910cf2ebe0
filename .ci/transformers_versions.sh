#!/usr/bin/env bash
# longattn.integrations.transformers (swap_attention, LongattnCache) must keep working on the newest
# transformers 5.x as well as on the venv's pinned release (5.24.0, which the main test run uses).
# This runs tests/nn with each other release, installed beside the venv's packages with --no-deps
# --target and put first on PYTHONPATH (torch and the rest stay the venv's).
#
# Dependencies: after installing a release, every requirement of it that the venv (with the target
# directory first) does not satisfy is installed into the same directory, repeated until nothing is
# missing (so a newer huggingface-hub or tokenizers lands next to the transformers that needs it).
# Skipped: `kernels` (5.25 lists it, but transformers only uses it when it is importable: Hub kernels,
# which would be fetched from the network). For 5.25.0 nothing else is missing from the venv
# (huggingface-hub >= 2.4.0, tokenizers 0.23.x, safetensors >= 0.8.0: the venv has these).
# Run inside the activated venv from the repository root: bash .ci/transformers_versions.sh [version...]
set -euo pipefail
cd "$(dirname "$0")/.."
versions=("$@")
[ ${#versions[@]} -eq 0 ] && versions=(5.25.0)
optional="kernels"

missing_requirements() {  # requirements of the packages in $1 that python (with $1 first) does not satisfy
  PYTHONPATH="$PWD/$1${PYTHONPATH:+:$PYTHONPATH}" python - "$1" "$optional" <<'EOF'
import importlib.metadata as md
import pathlib
import sys

from packaging.requirements import Requirement

target, optional = pathlib.Path(sys.argv[1]).resolve(), set(sys.argv[2].split())
missing = []
for dist in md.distributions(path=[str(target)]):
    for line in dist.requires or []:
        req = Requirement(line)
        name = req.name.lower().replace("_", "-")
        if name in optional or (req.marker is not None and not req.marker.evaluate({"extra": ""})):
            continue
        try:
            version = md.version(req.name)
        except md.PackageNotFoundError:
            version = None
        if version is None or not req.specifier.contains(version, prereleases=True):
            missing.append(f"{req.name}{req.specifier}")
print(" ".join(sorted(set(missing))))
EOF
}

for v in "${versions[@]}"; do
  dir=".ci-cache/transformers-$v"
  if [ ! -f "$dir/.installed" ]; then
    rm -rf "$dir"
    pip install -q --no-deps --target "$dir" "transformers==$v"
    for _ in 1 2 3 4 5; do
      need=$(missing_requirements "$dir")
      [ -z "$need" ] && break
      echo "== transformers $v needs: $need (installed into $dir)"
      # shellcheck disable=SC2086  # one argument per requirement
      pip install -q --no-deps --upgrade --target "$dir" $need
    done
    need=$(missing_requirements "$dir")
    [ -n "$need" ] && { echo "transformers $v: still missing $need" >&2; exit 1; }
    touch "$dir/.installed"
  fi
  echo "== tests/nn with transformers $v"
  PYTHONPATH="$PWD/$dir${PYTHONPATH:+:$PYTHONPATH}" python -c "import transformers; assert transformers.__version__ == '$v', transformers.__file__"
  PYTHONPATH="$PWD/$dir${PYTHONPATH:+:$PYTHONPATH}" python -m pytest tests/nn -q -p no:cacheprovider -W ignore::DeprecationWarning
done
