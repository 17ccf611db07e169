#!/usr/bin/env bash
# Rebuilds the demo model shipped in sonata_ros/models/ with the project's own commands, from seeds:
#   1. four unlabelled synthetic VLP-16 drives (seeds 100-103, 40 frames each) for self-distillation;
#   2. sonata-pretrain with config/pretrain/demo.yaml (1000 steps, seed 0; exported as fp16);
#   3. four labelled drives (seeds 200-203, 8 frames each) for the linear probe; a held-out drive
#      (seed 300) to score it. (One labelled street alone gives a head that overfits it: mIoU 0.31.)
# The demo drive that `make demo` replays is seed 0, a street none of these saw.
# About 40 minutes on a 2-core CPU. Usage: scripts/build_demo_model.sh [work dir, default runs/demo_model]
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-runs/demo_model}
BIN=${BIN:-.venv/bin}
MODELS=sonata_ros/models

data=()
for seed in 100 101 102 103; do
    "$BIN/sonata-synth" --sensor vlp16 --frames 40 --seed "$seed" --format frames --out "$WORK/unlabelled/$seed"
    data+=(--data "frames:$WORK/unlabelled/$seed")
done
labelled=()
for seed in 200 201 202 203; do
    "$BIN/sonata-synth" --sensor vlp16 --frames 8 --seed "$seed" --format frames --out "$WORK/labelled/$seed"
    labelled+=(--data "frames:$WORK/labelled/$seed")
done
"$BIN/sonata-synth" --sensor vlp16 --frames 8 --seed 300 --format frames --out "$WORK/heldout"

"$BIN/sonata-pretrain" --config config/pretrain/demo.yaml "${data[@]}" --out "$WORK/pretrain"
"$BIN/sonata-probe" --encoder "$WORK/pretrain/encoder.pth" "${labelled[@]}" --seed 0 --out "$WORK/head.pth"
"$BIN/sonata-eval" --encoder "$WORK/pretrain/encoder.pth" --head "$WORK/head.pth" --data "frames:$WORK/heldout" \
    --report "$WORK/eval"

mkdir -p "$MODELS"
cp "$WORK/pretrain/encoder.pth" "$MODELS/demo_encoder.pth"
cp "$WORK/head.pth" "$MODELS/demo_head.pth"
cp "$WORK/eval/report.json" "$MODELS/demo_eval.json"
echo "demo model written to $MODELS/ (held-out scores: $MODELS/demo_eval.json)"
