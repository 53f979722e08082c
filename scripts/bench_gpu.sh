#!/usr/bin/env bash
# Everything the GPU targets need, in one go (about 4 minutes on an H200), on the synthetic set with
# the umxhq recipe (hidden 512, nfft 4096, hop 1024, 6 s crops, batch 16, fp32).
#
#   bash scripts/bench_gpu.sh [WORKDIR] [UMX_WORKERS] [REFERENCE_WORKERS]   (defaults: ./bench-gpu, 2, 4)
#   QUICK=1 bash scripts/bench_gpu.sh /tmp/x 1 1      (a smoke run of this script on any machine)
#   SKIP_TESTS=1 SKIP_TRAIN=1 …                          (only the benchmarks)
#
# Prints, and keeps in WORKDIR/*.json:
#   1. the CUDA-graph step's tests on this GPU (captured = uncaptured; dropout redrawn per step);
#   2. umx-bench --json, fp32, the captured step and the eager one, with UMX_WORKERS workers:
#      loader samples/s, device step time without the loader, end to end, gpu_busy
#      (target: end to end ≥ 90 % of the no-loader rate with 2 workers); tf32 and bf16 briefly;
#   3. scripts/bench_train.py: umx (UMX_WORKERS workers) against open-unmix's own train loop with
#      FixedSourcesTrackFolderDataset and REFERENCE_WORKERS workers, same GPU, same data
#      (target: ≥ 3× end to end);
#   4. scripts/bench_joint.py --umxhq: 4 targets jointly against 4 single-target runs and open-unmix's loop
#      for one target (goals: <= 1/2 the wall time of 4 runs, < open-unmix's loop for one);
#   5. the recipe's augmentations and --ema: umx-bench's per-augmentation share of the step (#19: goal, all
#      together at most 10 % of the step);
#   6. fast BSSv4 on the GPU against museval (scripts/bench_bss.py --device cuda) and what --eval-every costs
#      there, both --eval-separation modes (scripts/bench_valid_sdr.py --umxhq, 1 and 4 targets) (#18);
#   7. umx-train for 3 short epochs with each step (loss curves, wall time), and its start to its first step;
#   8. umx-bench of every architecture of the model seam (#28, #29, #30): open-unmix's 4 targets, BS-RoFormer and
#      Mel-Band RoFormer at MSST's MUSDB18 sizes (bf16 autocast, MSST's chunk), HTDemucs at Demucs' htdemucs
#      sizes (fp32, its 7.8 s training length), the CUDA-graph step and eager.
# Needs: the umx package importable (pip install -e ., or PYTHONPATH=.), openunmix 1.3.0 (--no-deps).
set -uo pipefail
work=${1:-bench-gpu}
workers=${2:-2}
ref_workers=${3:-4}
py=${PYTHON:-python3}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$work"
export PYTHONPATH="$here:$here/..${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
failed=()
step() { echo; echo "== $1"; shift; "$@" || { echo "FAILED ($?): $*"; failed+=("$*"); }; }

if [[ "${QUICK:-0}" == 1 ]]; then
  tracks=3; duration=2.5
  model=(--hidden-size 16 --nfft 2048 --nhop 512 --seq-dur 1 --batch-size 2)
  timing=(--steps 2 --warmup 1 --loader-batches 2); short=(--steps 1 --warmup 1 --loader-batches 1)
  train=(--quick); first=("${model[@]}" --debug); spt=2
else
  tracks=16; duration=20
  model=(--hidden-size 512 --nfft 4096 --nhop 1024 --seq-dur 6 --batch-size 16)
  timing=(--steps 40 --warmup 5 --loader-batches 40); short=(--steps 15 --warmup 3 --loader-batches 10)
  train=(--steps 30 --warmup 5 --tracks "$tracks" --duration "$duration"); first=()
fi

echo "== machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "(no nvidia-smi)"
$py -c "import os, torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'available', torch.cuda.is_available(), '| cpus', len(os.sched_getaffinity(0)))"

[[ "${SKIP_TESTS:-0}" == 1 ]] || step "tests of the CUDA-graph step on this device" $py -m pytest -q -p no:cacheprovider "$here/../tests/test_step.py" \
  "$here/../tests/test_joint.py::test_joint_cuda_graph_replays_the_uncaptured_step" "$here/../tests/test_bss.py::test_cuda_matches_museval"

step "host → device copies of one umxhq batch (68 MB int16), pinned and pageable" $py -c "
import time, torch
if torch.cuda.is_available():
    for pinned in (True, False):
        host = torch.zeros(16, 4, 2, 264600, dtype=torch.int16, pin_memory=pinned); dev = torch.empty_like(host, device='cuda')
        times = []
        for _ in range(6):
            torch.cuda.synchronize(); t = time.perf_counter(); dev.copy_(host, non_blocking=True); torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        ms = 1000 * sorted(times[1:])[2]
        print(f'pinned={pinned}: {ms:.1f} ms per batch = {host.numel() * 2 / ms / 1e6:.2f} GB/s')"

echo "== data: synthetic, $tracks tracks of ~$duration s, as trackfolder_fix, and its shard set"
$py -c "import sys, bench_loader; from pathlib import Path; \
print(bench_loader.make_data(Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), musdb=False))" \
"$work/data" "$tracks" "$duration"

# 64 crops per track (the musdb recipe's): with 1, each of several workers gets a partial batch per epoch
fix=(--shards "$work/data/fix-shards" --target vocals --source-augmentations gain channelswap --random-track-mix
     --samples-per-track 64)
for variant in "auto auto" "auto off" "off off"; do
  set -- $variant; graph=$1; cache=$2
  step "umx-bench, umxhq recipe (trackfolder_fix, gain+channelswap, random mix), fp32, --cuda-graph $graph \
--device-cache $cache, $workers workers" bash -c "$py -m umx.bench_cli $(printf '%q ' "${fix[@]}" "${model[@]}" \
"${timing[@]}") --nb-workers $workers --cuda-graph $graph --device-cache $cache --json \
> $work/umx-bench-fp32-$graph-$cache.json && $py -c 'import json, sys; from umx import bench_advice; \
print(bench_advice.report(json.load(open(sys.argv[1]))))' $work/umx-bench-fp32-$graph-$cache.json"
done
for precision in tf32 bf16; do
  step "umx-bench, $precision, captured step" $py -m umx.bench_cli "${fix[@]}" "${model[@]}" "${short[@]}" \
    --nb-workers "$workers" --precision "$precision"
done

step "train loop: umx ($workers workers) against open-unmix's (FixedSources, $ref_workers workers), same GPU" \
  bash -c "$py $here/bench_train.py --work $work/data --dataset fixed --nb-workers $workers \
--reference-workers $ref_workers --also-eager ${train[*]} --json > $work/bench-train-fixed.json && \
$py -c 'import sys, json, bench_train; print(bench_train.table(json.load(open(sys.argv[1]))))' \
$work/bench-train-fixed.json"

if [[ "${QUICK:-0}" == 1 ]]; then joint=(--tracks 3 --duration 2.5 --samples-per-track 2 --steps 2 --warmup 1 \
  --loader-batches 2); else joint=(--umxhq --tracks 8 --duration 20 --samples-per-track 16 --steps 20 --warmup 5); fi
step "joint training of 4 targets against 4 single-target runs and open-unmix's loop for one, fp32 (#17)" \
  $py "$here/bench_joint.py" --work "$work/joint-data" --nb-workers "$workers" --reference "${joint[@]}" \
  --json "$work/bench-joint.json"

augs=(repitch gain channelswap flipsign scale shift speed pitch)
step "umx-bench, umxhq recipe with every augmentation and --ema 0.999: each augmentation's share of the step (#19)" \
  bash -c "$py -m umx.bench_cli $(printf '%q ' --shards "$work/data/fix-shards" --target vocals --random-track-mix \
--samples-per-track 64 "${model[@]}" "${timing[@]}") --source-augmentations ${augs[*]} --ema 0.999 \
--nb-workers $workers --json > $work/umx-bench-augmentations.json && $py -c 'import json, sys; \
r = json.load(open(sys.argv[1])); print(json.dumps(r.get(\"augmentations\"), indent=1))' $work/umx-bench-augmentations.json"

if [[ "${QUICK:-0}" == 1 ]]; then bss=(--seconds 3 --full-seconds 6 --no-second-point); valid=(--duration 5 --repeats 1)
else bss=(); valid=(--umxhq --repeats 3); fi
step "fast BSSv4 on the GPU against museval (#18)" $py "$here/bench_bss.py" --device cuda "${bss[@]}" \
  --json "$work/bench-bss-cuda.json"
for targets in "vocals" "vocals drums bass other"; do
  step "--eval-every's validation pass on the GPU, --eval-separation fast and exact, targets: $targets (#18)" \
    $py "$here/bench_valid_sdr.py" --work "$work/valid-sdr" --targets $targets "${valid[@]}" \
    --json "$work/bench-valid-sdr-${targets// /-}.json"
done

for graph in auto off; do
  [[ "${SKIP_TRAIN:-0}" == 1 ]] && break
  step "umx-train, 3 short epochs, --cuda-graph $graph (the loss curves of both steps)" bash -c "$py -m umx.train.cli \
$(printf '%q ' "${fix[@]}" "${model[@]}") --epochs 3 --samples-per-track ${spt:-20} --nb-workers $workers \
--cuda-graph $graph --output $work/train-$graph && $py -c 'import json, sys; h = json.load(open(sys.argv[1])); \
print({k: h[k] for k in (\"train_loss_history\", \"valid_loss_history\", \"train_time_history\")})' \
$work/train-$graph/vocals.json"
done

if [[ "${QUICK:-0}" == 1 ]]; then
  roformer=(--seq-dur 0.5 --batch-size 2 --dim 16 --depth 1 --heads 2 --dim-head 8 --stft-n-fft 512 --stft-hop-length 256
            --stft-win-length 512 --chunk-size 22050); bands=(--freqs-per-bands $(printf '8 %.0s' {1..32}) 1); mel=(--num-bands 8)
else
  roformer=(--seq-dur 2.9837 --batch-size 4 --precision bf16); bands=(); mel=()  # 131584 samples: MSST's chunk
fi
if [[ "${QUICK:-0}" == 1 ]]; then
  htdemucs=(--seq-dur 0.5 --batch-size 2 --channels 8 --growth 1 --t-layers 1 --t-heads 2)
else
  htdemucs=(--seq-dur 7.8 --batch-size 4 --lr 3e-4)  # Demucs' htdemucs sizes, fp32, its 7.8 s training length
fi
arch_data=(--shards "$work/data/fix-shards" --targets vocals drums bass other --samples-per-track 64 --random-track-mix
           --source-augmentations gain)
for graph in auto off; do
  step "umx-bench --arch openunmix, 4 targets, --cuda-graph $graph" $py -m umx.bench_cli "${arch_data[@]}" "${model[@]}" \
    "${short[@]}" --nb-workers "$workers" --cuda-graph "$graph" --json
  step "umx-bench --arch bs_roformer (MSST's MUSDB18 sizes), --cuda-graph $graph" $py -m umx.bench_cli "${arch_data[@]}" \
    --arch bs_roformer "${roformer[@]}" "${bands[@]}" "${short[@]}" --nb-workers "$workers" --cuda-graph "$graph" --json
  step "umx-bench --arch mel_band_roformer (MSST's MUSDB18 sizes), --cuda-graph $graph" $py -m umx.bench_cli \
    "${arch_data[@]}" --arch mel_band_roformer "${roformer[@]}" "${mel[@]}" "${short[@]}" --nb-workers "$workers" \
    --cuda-graph "$graph" --json
  step "umx-bench --arch htdemucs (Demucs' htdemucs sizes), --cuda-graph $graph" $py -m umx.bench_cli \
    "${arch_data[@]}" --arch htdemucs "${htdemucs[@]}" "${short[@]}" --nb-workers "$workers" --cuda-graph "$graph" --json
done

step "umx-train start to first step (prepared set; statistics from the manifest)" \
  $py -c "import sys, json; from umx import bench; print(json.dumps(bench.time_to_first_step(sys.argv[1:])))" \
  --shards "$work/data/fix-shards" --epochs 1 --quiet --nb-workers "$workers" --output "$work/first-step-model" \
  "${first[@]}"
echo
echo "== done: results in $work; ${#failed[@]} step(s) failed"
for f in "${failed[@]}"; do echo "  failed: $f"; done
[[ ${#failed[@]} == 0 ]]
