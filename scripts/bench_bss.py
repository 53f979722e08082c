#!/usr/bin/env python
"""Benchmark umx.bss.evaluate against museval.evaluate (BSSv4), side by side.

1. A synthetic track (umx.synth stems with a -60 dB noise floor and silent stretches, so
   some frames are NaN; default 30 s, 4 targets, stereo, 44.1 kHz; estimates = filtered
   references + leakage + noise) is scored by both: times, their ratio, and the largest
   per-frame and per-median differences of the scores.
2. museval is also timed on a track a third as long; its time is modelled as
   `a + b * seconds` through the two points (museval's fixed cost is its four 4096^2
   solves; everything else is linear in the length) and extrapolated to a full MUSDB18
   track (`--museval-full` measures it instead: about 2.5 minutes per core).
3. Our implementation alone on a full-length track (default 240 s), in a fresh process so
   its peak memory above the inputs can be reported too.

    python scripts/bench_bss.py [--seconds 30] [--full-seconds 240] [--device cpu]
                                [--threads N] [--museval-full] [--json OUT]

On a machine shared with other work, pass `--threads 1`: two spinning OpenMP threads on two
busy cores made umx.bss 4.5x slower.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path

if "--threads" in sys.argv[:-1]:  # before numpy loads OpenBLAS: museval's solves get the same count
    os.environ["OPENBLAS_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = sys.argv[sys.argv.index("--threads") + 1]

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RATE = 44100


def make_track(seconds: float, seed: int = 3, floor_db: float | None = -60.0) -> tuple[np.ndarray, np.ndarray]:
    """references, estimates `[4, n, 2]` float32: estimates are the references through a
    short random filter, plus leakage of the other stems and a little noise.

    umx.synth's stems are noise-free wavetable harmonics: over 512 lags their correlation
    matrix is singular to rounding, which makes museval's ISR/SIR/SAR rounding noise (see
    docs/metrics.md). Like a recording, each stem gets a noise floor `floor_db` below its RMS
    where it is not digitally silent (None: none), so exact silences (NaN frames) remain."""
    from scipy.signal import lfilter

    from umx import synth

    stems = synth.generate_track(seed, duration=seconds, sample_rate=RATE)
    refs = np.stack([x.T for x in stems.values()])  # [4, n, 2]
    rng = np.random.default_rng(seed)
    if floor_db is not None:
        for j in range(len(refs)):
            rms = np.sqrt(np.mean(refs[j].astype(np.float64) ** 2))
            floor = (refs[j] != 0) * rng.standard_normal(refs[j].shape) * rms * 10 ** (floor_db / 20)
            refs[j] += floor.astype(np.float32)
    ests = np.empty_like(refs)
    total = refs.sum(0)
    for j in range(len(refs)):
        fir = np.r_[1.0, 0.3 * rng.standard_normal(15) * np.exp(-np.arange(15) / 4)]
        leak = rng.uniform(0.05, 0.2)
        noise = 10 ** (-30 / 20) * np.sqrt(np.mean(refs[j] ** 2)) * rng.standard_normal(refs[j].shape)
        ests[j] = lfilter(fir, [1.0], refs[j], axis=0) + leak * (total - refs[j]) + noise
    return refs, ests


def time_ours(refs, ests, device):
    import torch

    from umx import bss

    t = time.perf_counter()
    out = bss.evaluate(refs, ests, win=RATE, hop=RATE, device=device)
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t, np.stack(out)


def time_museval(refs, ests):
    import museval

    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = museval.evaluate(refs, ests, win=RATE, hop=RATE, mode="v4")
    return time.perf_counter() - t, np.stack(out)


def compare(ours: np.ndarray, ref: np.ndarray) -> dict:
    """Per metric: largest per-frame |difference| (finite frames), largest |difference| of the
    per-source nanmedian, and whether NaN frames coincide."""
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for k, m in enumerate(("SDR", "ISR", "SIR", "SAR")):
            a, b = ours[k], ref[k]
            fin = np.isfinite(a) & np.isfinite(b)
            out[m] = {
                "max_abs_frame_db": float(np.abs(a - b)[fin].max()) if fin.any() else 0.0,
                "max_abs_median_db": float(np.nanmax(np.abs(np.nanmedian(a, 1) - np.nanmedian(b, 1)))),
                "nan_frames_identical": bool(np.array_equal(np.isnan(a), np.isnan(b))),
                "nan_frames": int(np.isnan(b).sum()),
            }
    return out


def _status_mib(key: str) -> float:
    """VmRSS / VmHWM of this process from /proc (Linux), MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child_full(seconds: float, device: str, floor_db: float | None) -> None:
    """Our implementation alone on a full-length track (run in a fresh process): its time,
    and its peak memory beyond the inputs (the high-water mark is reset after generating
    the track, where Linux allows it)."""
    t = time.perf_counter()
    refs, ests = make_track(seconds, floor_db=floor_db)
    gen = time.perf_counter() - t
    time_ours(refs[:, : 2 * RATE], ests[:, : 2 * RATE], device)  # warm-up (threads, FFT plans)
    rss0 = _status_mib("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        reset = True
    except OSError:
        reset = False
    secs, out = time_ours(refs, ests, device)
    print(json.dumps({"seconds": seconds, "ours_s": secs, "generate_s": gen,
                      "input_bytes": int(refs.nbytes + ests.nbytes), "rss_before_mib": rss0,
                      "peak_rss_mib": _status_mib("VmHWM"), "peak_reset": reset,
                      "nframes": int(out.shape[-1]), "nan_frames": int(np.isnan(out[0]).sum())}))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="length of the side-by-side track (default 30)")
    ap.add_argument("--full-seconds", type=float, default=240.0,
                    help="length of the full track for our implementation alone (default 240; 0 skips)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-second-point", action="store_true",
                    help="skip the shorter museval run (the full-track estimate is then proportional)")
    ap.add_argument("--museval-full", action="store_true",
                    help="also run museval on the full-length track (minutes) instead of only estimating its time")
    ap.add_argument("--noise-floor-db", default="-60",
                    help="noise floor of the stems below their RMS, dB (default -60; 'none': noise-free)")
    ap.add_argument("--threads", type=int,
                    help="CPU threads for both (torch and OpenBLAS); default: torch's and OpenBLAS' defaults. "
                         "On a machine shared with other work, 1 thread can be several times faster")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--_child-full", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    floor = None if args.noise_floor_db.lower() == "none" else float(args.noise_floor_db)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args._child_full:
        child_full(args._child_full, args.device, floor)
        return 0

    res = {"machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                       "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS", "default"),
                       "platform": platform.platform(), "processor": platform.processor(),
                       "torch": torch.__version__, "device": args.device,
                       "load_average_at_start": os.getloadavg()},
           "noise_floor_db": floor, "tracks": []}
    refs, ests = make_track(args.seconds, floor_db=floor)
    time_ours(refs[:, : 2 * RATE], ests[:, : 2 * RATE], args.device)  # warm-up
    ours_s, ours = time_ours(refs, ests, args.device)
    print(f"[{args.seconds:g} s] umx.bss: {ours_s:.2f} s; running museval ...", flush=True)
    mus_s, mus = time_museval(refs, ests)
    res["tracks"].append({"seconds": args.seconds, "ours_s": ours_s, "museval_s": mus_s,
                          "speedup": mus_s / ours_s, "agreement": compare(ours, mus)})
    points = [(args.seconds, mus_s)]
    if not args.no_second_point:
        short = max(3.0, round(args.seconds / 3))
        r2, e2 = make_track(short, seed=4, floor_db=floor)
        o2_s, o2 = time_ours(r2, e2, args.device)
        m2_s, m2 = time_museval(r2, e2)
        res["tracks"].append({"seconds": short, "ours_s": o2_s, "museval_s": m2_s,
                              "speedup": m2_s / o2_s, "agreement": compare(o2, m2)})
        points.append((short, m2_s))

    if args.full_seconds:
        cmd = [sys.executable, __file__, "--_child-full", str(args.full_seconds), "--device", args.device,
               "--noise-floor-db", args.noise_floor_db] + (["--threads", str(args.threads)] if args.threads else [])
        full = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        (s1, t1), *rest = points
        prop = t1 * args.full_seconds / s1
        if rest:
            s2, t2 = rest[0]
            b = (t1 - t2) / (s1 - s2)
            est = t2 + b * (args.full_seconds - s2)
            how = f"affine fit through museval's {s2:g}-s and {s1:g}-s times"
        else:
            est, how = prop, f"museval's {s1:g}-s time scaled by length"
        full.update({"museval_est_s": est, "museval_est_method": how, "museval_proportional_s": prop,
                     "speedup_est": est / full["ours_s"]})
        if args.museval_full:
            rf, ef = make_track(args.full_seconds, floor_db=floor)
            _, of = time_ours(rf, ef, args.device)
            print(f"[{args.full_seconds:g} s] running museval ...", flush=True)
            mf_s, mf = time_museval(rf, ef)
            full.update({"museval_s": mf_s, "speedup": mf_s / full["ours_s"], "agreement": compare(of, mf)})
        res["full"] = full

    print()
    print(f"{'track':<26}{'museval [s]':>13}{'umx.bss [s]':>13}{'ratio':>9}")
    for t in res["tracks"]:
        print(f"{t['seconds']:>5g} s, 4 src, stereo{'':<5}{t['museval_s']:>13.1f}{t['ours_s']:>13.2f}"
              f"{t['speedup']:>8.1f}x")
    if "full" in res:
        f = res["full"]
        print(f"{f['seconds']:>5g} s, 4 src, stereo{'':<5}{'~%.0f' % f['museval_est_s']:>13}{f['ours_s']:>13.2f}"
              f"{f['speedup_est']:>8.1f}x  (museval estimated: {f['museval_est_method']})")
        if "museval_s" in f:
            print(f"{f['seconds']:>5g} s, 4 src, stereo{'':<5}{f['museval_s']:>13.1f}{f['ours_s']:>13.2f}"
                  f"{f['speedup']:>8.1f}x  (museval measured)")
        print(f"  memory of the {f['seconds']:g}-s run: peak RSS {f['peak_rss_mib']:.0f} MiB, "
              f"{f['peak_rss_mib'] - f['rss_before_mib']:.0f} MiB above the RSS before it"
              f"{'' if f['peak_reset'] else ' (peak not reset: includes the track generation)'}; "
              f"inputs {f['input_bytes'] / 2**20:.0f} MiB float32; {f['nframes']} frames, {f['nan_frames']} NaN")
    print()
    for t in res["tracks"] + ([res["full"]] if "agreement" in res.get("full", {}) else []):
        agr = t["agreement"]
        print(f"{t['seconds']:g}-s track, max |ours - museval| in dB, per frame / of the medians; NaN frames identical:")
        for m, a in agr.items():
            print(f"  {m}: {a['max_abs_frame_db']:.2e} / {a['max_abs_median_db']:.2e}; "
                  f"{'yes' if a['nan_frames_identical'] else 'NO'} ({a['nan_frames']} NaN)")
    res["machine"]["load_average_at_end"] = os.getloadavg()
    print(f"load average (1, 5, 15 min) at start {res['machine']['load_average_at_start']}, "
          f"at end {res['machine']['load_average_at_end']} ({os.cpu_count()} CPUs)")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
