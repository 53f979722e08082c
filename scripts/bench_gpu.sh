#!/usr/bin/env bash
# Everything the GPU targets need, in one go, on the synthetic set with the umxhq recipe
# (hidden 512, nfft 4096, hop 1024, 6 s crops, batch 16, musdb: gain + channelswap, random track mix).
#
#   bash scripts/bench_gpu.sh [WORKDIR] [NB_WORKERS]     (defaults: ./bench-gpu, 8)
#   QUICK=1 bash scripts/bench_gpu.sh /tmp/x 1           (a smoke run of this script on any machine)
#
# Prints, and keeps in WORKDIR/*.json:
#   1. umx-bench --json at fp32, tf32 and bf16: loader samples/s, device step time without the
#      loader, end-to-end samples/s and gpu_busy (target: end to end ≥ 90 % of the no-loader rate),
#      and with 1 and 2 workers (how many workers one GPU needs);
#   2. scripts/bench_loader.py: the loader against open-unmix's datasets (CPU side; ratios);
#   3. scripts/bench_train.py: umx against open-unmix's train loop on this GPU with the same workers
#      (target: ≥ 3× end to end), MUSDBDataset(is_wav=True) as umxhq uses it, and FixedSources;
#   4. umx-train's start to its first step.
# Needs: pip install -e . && pip install --no-deps openunmix==1.3.0, musdb, ffmpeg on PATH.
set -euo pipefail
work=${1:-bench-gpu}
workers=${2:-8}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$work"
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"

if [[ "${QUICK:-0}" == 1 ]]; then
  tracks=3; duration=2.5
  model=(--hidden-size 16 --nfft 2048 --nhop 512 --seq-dur 1 --batch-size 2)
  timing=(--steps 2 --warmup 1 --loader-batches 2); short=(--steps 1 --warmup 1 --loader-batches 1)
  loader=(--quick --no-first-step); train=(--quick); first=("${model[@]}" --debug)
else
  tracks=16; duration=20
  model=(--hidden-size 512 --nfft 4096 --nhop 1024 --seq-dur 6 --batch-size 16)
  timing=(--steps 30 --warmup 5 --loader-batches 40); short=(--steps 10 --warmup 3 --loader-batches 20)
  loader=(); train=(--steps 20 --warmup 3); first=()
fi

echo "== machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "(no nvidia-smi)"
python -c "import os, torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'available', torch.cuda.is_available(), '| cpus', len(os.sched_getaffinity(0)))"

echo "== data: synthetic, $tracks tracks of ~$duration s, as trackfolder_fix and musdb, and their shard sets"
python -c "import sys, bench_loader; from pathlib import Path; \
print(bench_loader.make_data(Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])))" "$work/data" "$tracks" "$duration"

recipe=(--shards "$work/data/musdb-shards" --target vocals "${model[@]}" --nb-workers "$workers")
for precision in fp32 tf32 bf16; do
  echo "== umx-bench, umxhq recipe, $precision, $workers workers"
  python -m umx.bench "${recipe[@]}" "${timing[@]}" --precision "$precision" --json | tee "$work/umx-bench-$precision.json"
  python -m umx.bench "${recipe[@]}" "${short[@]}" --precision "$precision"
done
for w in 1 2; do
  echo "== umx-bench, fp32, $w worker(s): how many workers does one GPU need?"
  python -m umx.bench "${recipe[@]}" "${short[@]}" --nb-workers "$w"
done

echo "== loader against open-unmix's datasets (CPU side)"
python "$here/bench_loader.py" --work "$work/data" --tracks "$tracks" --duration "$duration" "${loader[@]}" \
  --json > "$work/bench-loader.json"
python -c "import sys, json, bench_loader; print(bench_loader.table(json.load(open(sys.argv[1]))))" \
  "$work/bench-loader.json"

for dataset in musdb fixed; do
  echo "== train loop: umx against open-unmix ($dataset), $workers workers, same device"
  python "$here/bench_train.py" --work "$work/data" --tracks "$tracks" --duration "$duration" \
    --nb-workers "$workers" --dataset "$dataset" "${train[@]}" --json > "$work/bench-train-$dataset.json"
  python -c "import sys, json, bench_train; print(bench_train.table(json.load(open(sys.argv[1]))))" \
    "$work/bench-train-$dataset.json"
done

echo "== umx-train start to first step (prepared set; statistics from the manifest)"
python -c "import sys, json; from umx import bench; \
print(json.dumps(bench.time_to_first_step(sys.argv[1:])))" --shards "$work/data/musdb-shards" --epochs 1 --quiet \
  --nb-workers "$workers" --output "$work/first-step-model" "${first[@]}"
echo "== done: results in $work"
