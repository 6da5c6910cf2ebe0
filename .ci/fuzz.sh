#!/usr/bin/env bash
# A longer fuzz session of tests/fuzz (manual / nightly; not part of .ci/run's budget): every public op on
# every CPU backend (reference, triton under TRITON_INTERPRET=1, ascend_sim) against tests/oracle.py,
# with 10x the CI examples (~5 minutes on 2 cores; the ascend_sim build, if stale, comes on top) and a
# fresh seed, printed so that a failure can be replayed:
#   LONGATTN_FUZZ_SEED=<seed> LONGATTN_FUZZ_EXAMPLES=10x bash .ci/fuzz.sh
# or one example alone with the "replay:" command a failure prints. Knobs (tests/fuzz/runner.py):
# LONGATTN_FUZZ_EXAMPLES ("10x" here; "Kx" scales the per-backend defaults, "N" sets N per backend),
# LONGATTN_FUZZ_SEED, LONGATTN_FUZZ_JOBS (parallel workers), LONGATTN_FUZZ_TIMEOUT (s per worker run),
# LONGATTN_FUZZ_LOGDIR (JSON-lines log of every example; default .ci-cache/fuzz/<time>-seed<seed>).
# Extra arguments go to pytest (e.g. -k "sparse_attention and triton").
# Run inside the activated venv from anywhere: bash .ci/fuzz.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
seed="${LONGATTN_FUZZ_SEED:-$(python -c 'import random; print(random.randrange(2**31))')}"
export LONGATTN_FUZZ_SEED="$seed"
export LONGATTN_FUZZ_EXAMPLES="${LONGATTN_FUZZ_EXAMPLES:-10x}"
export LONGATTN_FUZZ_LOGDIR="${LONGATTN_FUZZ_LOGDIR:-.ci-cache/fuzz/$(date +%Y%m%d-%H%M%S)-seed$seed}"
echo "== fuzz: seed $LONGATTN_FUZZ_SEED, examples $LONGATTN_FUZZ_EXAMPLES, logs in $LONGATTN_FUZZ_LOGDIR"
status=0
python -m pytest tests/fuzz -q -p no:cacheprovider -rfEX "$@" || status=$?
echo "== fuzz: seed $LONGATTN_FUZZ_SEED (replay with LONGATTN_FUZZ_SEED=$LONGATTN_FUZZ_SEED LONGATTN_FUZZ_EXAMPLES=$LONGATTN_FUZZ_EXAMPLES)"
exit $status
