#!/usr/bin/env bash
# Rebuilds the demo model shipped in sonata_ros/models/ with the project's own commands, from seeds,
# from synthetic data only (the real scans in ../shared/real are non-commercial: they never train it):
#   1. eight unlabelled synthetic drives (seeds 100-107, 30 frames each) across the sensor mix
#      (VLP-16, HDL-32E, HDL-64E, VLS-128, OS1-128) for self-distillation, outdoor domain (sensor frame);
#   2. sonata-pretrain with config/pretrain/demo.yaml (exported as fp16);
#   3. eight labelled drives (seeds 200-207, 6 frames each) for the linear probe (sonata-probe's default
#      class weights), and two held-out drives (seeds 300, 301) to score it.
# The demo drive that `make demo` replays is seed 0, a street none of these saw. About 90 minutes on a
# 2-core CPU (see README "The demo model"). Usage: scripts/build_demo_model.sh [work dir, default
# runs/demo_model]; PY selects the interpreter (default .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-runs/demo_model}
PY=${PY:-.venv/bin/python}
MODELS=sonata_ros/models

synth() {  # sensor seed frames out
    [ -f "$4/index.json" ] || "$PY" -m sonata_model.synth.cli --sensor "$1" --seed "$2" --frames "$3" --format frames \
        --out "$4" > /dev/null
}

data=()
seed=100
for sensor in vlp16 hdl32 hdl64 vls128 os128 hdl64 hdl32 vlp16; do
    synth "$sensor" "$seed" 30 "$WORK/unlabelled/$seed"
    data+=(--data "frames:$WORK/unlabelled/$seed")
    seed=$((seed + 1))
done
labelled=()
seed=200
for sensor in hdl64 vlp16 hdl32 vls128 os128 hdl64 vlp16 hdl32; do
    synth "$sensor" "$seed" 6 "$WORK/labelled/$seed"
    labelled+=(--data "frames:$WORK/labelled/$seed")
    seed=$((seed + 1))
done
synth hdl64 300 6 "$WORK/heldout/300"
synth vlp16 301 6 "$WORK/heldout/301"

"$PY" -m sonata_model.train.pretrain --config config/pretrain/demo.yaml "${data[@]}" --out "$WORK/pretrain"
"$PY" -m sonata_model.train.probe --encoder "$WORK/pretrain/encoder.pth" "${labelled[@]}" --seed 0 --out "$WORK/head.pth"
"$PY" -m sonata_model.train.evaluate --encoder "$WORK/pretrain/encoder.pth" --head "$WORK/head.pth" \
    --data "frames:$WORK/heldout/300" --data "frames:$WORK/heldout/301" --report "$WORK/eval"

mkdir -p "$MODELS"
cp "$WORK/pretrain/encoder.pth" "$MODELS/demo_encoder.pth"
cp "$WORK/head.pth" "$MODELS/demo_head.pth"
cp "$WORK/eval/report.json" "$MODELS/demo_eval.json"
echo "demo model written to $MODELS/ (held-out scores: $MODELS/demo_eval.json)"
