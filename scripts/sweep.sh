#!/usr/bin/env bash
# `make sweep`: a small scaling sweep on the demo corpus (data and tokenizer shared with `make demo-model`),
# then its report copied to docs/experiments/sweep/ (report, plots, each depth's result.json and run
# report; no checkpoints). Rerunning skips finished depths and resumes a killed one. About 4 minutes on
# 2 idle cores with the defaults below.
set -euo pipefail
cd "$(dirname "$0")/.."

NANOCHAT=${NANOCHAT:-.venv/bin/nanochat}
WORK=${WORK:-build/demo}              # data and tokenizer (the demo model's)
SWEEP=${SWEEP:-build/sweep}           # run folders with checkpoints (not committed)
OUT=${OUT:-docs/experiments/sweep}    # the committed report
DEPTHS=${SWEEP_DEPTHS:-1,2,3,4}
TOKENS=${SWEEP_TOKENS:-196608}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

[ -d "$WORK/data/pretrain" ] || "$NANOCHAT" data prepare --out "$WORK/data"
[ -f "$WORK/tokenizer/tokenizer.pkl" ] ||
    "$NANOCHAT" train tokenizer --data "$WORK/data/pretrain" --out "$WORK/tokenizer" --vocab-size 2048
"$NANOCHAT" sweep --data "$WORK/data/pretrain" --tokenizer "$WORK/tokenizer" --out "$SWEEP" \
    --depths "$DEPTHS" --tokens "$TOKENS" --max-seq-len 128 --device-batch-size 4

rm -rf "$OUT" && mkdir -p "$OUT"
cp "$SWEEP"/report.md "$SWEEP"/*.png "$SWEEP"/sweep.json "$OUT"/
for run in "$SWEEP"/d*/; do
    name=$(basename "$run")
    mkdir -p "$OUT/$name/report"
    cp "$run/result.json" "$OUT/$name/"
    cp "$run"/report/* "$OUT/$name/report/"
done
echo "sweep report written to $OUT/report.md"
