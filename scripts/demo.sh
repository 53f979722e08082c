#!/usr/bin/env bash
# End-to-end demo on synthetic data: synth → prep → train (small model, CPU).
# Usage: bash scripts/demo.sh [WORKDIR]   (default: ./demo)
set -euo pipefail
work=${1:-demo}
mkdir -p "$work"

umx-synth trackfolder_fix "$work/data" --train 8 --valid 2 --duration 12 --seed 0
umx-prep trackfolder_fix "$work/data" --out "$work/shards" --overwrite --quiet \
    --target-file vocals.wav --interferer-files bass.wav drums.wav other.wav
umx-train --shards "$work/shards" --target vocals --output "$work/model" \
    --epochs 12 --batch-size 8 --seq-dur 4 --hidden-size 64 --samples-per-track 4 \
    --source-augmentations gain channelswap --random-track-mix --nb-workers 2 --lr 0.003
python - "$work/model/vocals.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"epochs {r['epochs_trained']}: train loss {r['train_loss_history'][0]:.3f} -> {r['train_loss_history'][-1]:.3f}, "
      f"best valid loss {r['best_loss']:.3f} at epoch {r['best_epoch']}")
PY
