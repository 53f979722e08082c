#!/usr/bin/env bash
# End-to-end demo on synthetic data: synth → prep → train (small model, CPU) → separate → eval → plot.
# Usage: bash scripts/demo.sh [WORKDIR]   (default: ./demo)
set -euo pipefail
work=${1:-demo}
mkdir -p "$work"

umx-synth trackfolder_fix "$work/data" --train 8 --valid 2 --duration 12 --seed 0
umx-prep trackfolder_fix "$work/data" --out "$work/shards" --overwrite --quiet \
    --target-file vocals.wav --interferer-files bass.wav drums.wav other.wav
umx-train --shards "$work/shards" --target vocals --output "$work/model" \
    --epochs 12 --batch-size 8 --seq-dur 4 --hidden-size 64 --samples-per-track 4 \
    --source-augmentations gain channelswap --random-track-mix --nb-workers 2 --lr 0.003 --eval-every 4
python - "$work/model/vocals.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"epochs {r['epochs_trained']}: train loss {r['train_loss_history'][0]:.3f} -> {r['train_loss_history'][-1]:.3f}, "
      f"best valid loss {r['best_loss']:.3f} at epoch {r['best_epoch']}")
PY

# separate one valid-track mixture (the sum of its stems) into vocals + residual
python - "$work/data/valid/track_000" "$work/mixture/track_000.wav" <<'PY'
import sys
from pathlib import Path
from umx import audio
track, out = Path(sys.argv[1]), Path(sys.argv[2])
out.parent.mkdir(parents=True, exist_ok=True)
mix = sum(audio.read(track / f"{s}.wav")[0] for s in ("vocals", "bass", "drums", "other"))
audio.write(out, mix, 44100)
PY
umx-separate "$work/model" "$work/mixture/track_000.wav" --outdir "$work/separated" --residual --no-cuda

# score the valid split (BSSv4 cSDR and uSDR, model vs the mixture itself), then draw the loss curves
umx-eval "$work/model" --shards "$work/shards" --split valid --outdir "$work/eval" --no-cuda
echo "loss curves: $(umx-plot "$work/model" --target vocals)"
