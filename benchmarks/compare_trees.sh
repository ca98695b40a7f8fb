#!/bin/bash
# Before/after in one run: two checkouts (e.g. `git worktree add ../old REV`) alternate,
# each round running the three benchmarks issue 8's rule names; then
# `python -m benchmarks.compare_ratios OUT` prints medians and ratios.
#   benchmarks/compare_trees.sh OLD_TREE NEW_TREE OUT [ROUNDS]
set -u
OLD=$1 NEW=$2 OUT=$3 ROUNDS=${4:-5}
PY=${PY:-$(pwd)/.venv/bin/python}
mkdir -p "$OUT"
for round in $(seq 1 "$ROUNDS"); do
  for side in base main; do
    tree=$OLD; [ "$side" = main ] && tree=$NEW
    cd "$tree" || exit 1
    echo "$(date -u +%T) round $round $side load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/log"
    timeout 600 "$PY" -m benchmarks.program_verify --repeats 3 --json "$OUT/pv_${side}_$round.json" > /dev/null 2>&1
    timeout 600 "$PY" -m benchmarks.store --json "$OUT/store_${side}_$round.json" > /dev/null 2>&1
    timeout 600 "$PY" -m benchmarks.campaign --network resnet32 --clock virtual \
      --json "$OUT/camp_${side}_$round.json" > /dev/null 2>&1
  done
done
echo "$(date -u +%T) done load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/log"
