"""umx-bench's judgement: measured numbers (a result of `bench.bench`) → data-bound or not,
what to change, and the human-readable report.

Pure functions of the result dict: no measuring here (bench.py measures), so tests can
give them any numbers.
"""

from __future__ import annotations

import math


# --- the verdict -------------------------------------------------------------------

def verdict(r: dict) -> tuple[bool, list[str]]:
    """(data-bound?, plain advice) from a result of `bench`."""
    dev, workers, cpus = r["device_kind"], r["nb_workers"], r["cpus"]
    need = r["device_samples_per_s"]
    have, per = r["loader_samples_per_s"], r["loader_samples_per_s_per_worker"]
    busy = r.get("gpu_busy", 1.0)
    advice = []
    # data-bound: the loader alone cannot keep up, or the device idles while the loader has
    # little headroom; an idle device with a loader far ahead of it is host overhead instead
    data_bound = have < need or (busy < 0.9 and have < 2 * need)
    if have < need:
        want = math.ceil(1.25 * need / per) if per > 0 else cpus
        advice.append(f"the loader delivers {have:.0f} samples/s with {workers} worker(s) but the {dev} could train "
                      f"{need:.0f}: the run is data-bound")
        if want <= max(1, cpus - 1):
            advice.append(f"use --nb-workers {want} (each worker gives about {per:.0f} samples/s; "
                          f"{cpus} CPU cores here)")
        else:
            advice.append(f"{want} workers would be needed at {per:.0f} samples/s each, more than the {cpus} cores "
                          f"here: use --nb-workers {max(1, cpus - 1)} and a machine with more cores per device, or "
                          "more crops per record read (--samples-per-track, if the recipe allows it)")
    elif busy < 0.9:
        advice.append(f"the loader alone keeps up ({have:.0f} ≥ {need:.0f} samples/s) but end to end the {dev} is "
                      f"busy only {100 * busy:.0f} % of the time")
        if workers == 0:
            advice.append("use --nb-workers ≥ 1: with 0 the same process reads the data and trains")
        elif dev == "cpu":
            advice.append(f"not the data: on the CPU the {workers} loader worker(s) take cores from the training "
                          f"threads ({cpus} cores here); that is the cost of training on a CPU")
        elif have < 2 * need:
            want = min(max(workers + 1, math.ceil(2 * need / per)), max(1, cpus - 1))
            advice.append(f"the loader has little headroom ({have / need:.1f}×): "
                          + (f"use --nb-workers {want} to hide its latency" if want > workers else
                             "and no core is left for more workers: a machine with more cores per device"))
        else:
            advice.append("not the data (the loader has ample headroom): host-side overhead per step — check that "
                          "the CPU is not shared, try --precision bf16 / tf32, a larger --batch-size")
    else:
        advice.append(f"compute-bound: the {dev} is busy {100 * busy:.0f} % of the time and the loader has "
                      f"{have / need:.1f}× the samples/s it needs")
        fewer = max(1, math.ceil(1.25 * need / per)) if per > 0 else workers
        if workers > 1 and fewer < workers:
            advice.append(f"fewer workers would do (about {fewer}), leaving cores and memory free")
    if dev == "GPU" and r.get("step_kind") == "eager" and r.get("seq_dur", 0) > 0:
        advice.append("the step runs eagerly (launch-bound for open-unmix's LSTMs): --cuda-graph auto captures it "
                      "as one CUDA graph (not under torchrun)")
    if r.get("train_partial_batches"):
        advice.append(f"{r['train_partial_batches']} of {r['train_steps']} batches were partial: each worker's share "
                      "of an epoch is not a multiple of --batch-size (a short epoch split over the workers), and a "
                      "partial batch is a whole step for fewer samples (uncaptured, for the CUDA-graph step): raise "
                      "--samples-per-track or use fewer workers")
    mem = r.get("pool", {})
    ram = r.get("ram_bytes", 0)
    if mem and ram and max(1, workers) * mem["budget_bytes"] > 0.5 * ram:
        advice.append(f"{max(1, workers)} worker(s) × {mem['budget_bytes'] / 2**30:.1f} GiB budget is more than half "
                      f"the {ram / 2**30:.0f} GiB of RAM: lower --pool-size or --nb-workers")
    io = r.get("loader_io", {})
    if io.get("misses"):
        advice.append(f"{io['misses']} shard(s) were fetched from remote storage during the measurement: give "
                      "--cache-dir a fast local disk and --cache-size at least the shard set's size, so later "
                      "epochs read the cache")
    return data_bound, advice


# --- the report --------------------------------------------------------------------

def memory_line(wm: dict, budget: dict) -> str:
    """One line: what a loader process held, against its budget."""
    mb = 2**20
    return (f"loader process peak RSS {wm['peak_rss'] / mb:.0f} MiB, grown {wm['grown_rss'] / mb:.0f} MiB over its start "
            f"(batch buffers {wm['grown_shmem'] / mb:.0f}, mapped shard pages {wm['grown_file'] / mb:.0f}, heap "
            f"{wm['grown_anon'] / mb:.0f}); budget {budget['budget_bytes'] / mb:.0f} MiB = {budget['formula']}")


MODEL_SIZES = ("dim", "depth", "heads", "stft_n_fft", "stft_hop_length", "chunk_size")  # shown for other architectures


def report(r: dict) -> str:
    """The human-readable summary of a `bench` result."""
    wm = r["worker_memory"]
    who = f"{r['nb_workers']} worker(s)" if r["nb_workers"] else "in-process (--nb-workers 0)"
    targets = r.get("targets") or [r["target"]]
    arch = r.get("arch", "openunmix")
    model = f"hidden {r['hidden_size']}, nfft {r['nfft']}" if arch == "openunmix" else \
        f"--arch {arch} ({', '.join(f'{k} {v}' for k, v in r.get('arch_options', {}).items() if k in MODEL_SIZES)})"
    what = f"target '{r['target']}'" if len(targets) == 1 else f"targets {', '.join(targets)}" + (
        f" ({r.get('loss', 'independent')} loss{', bridged' if r.get('bridge') else ''})" if arch == "openunmix" else "")
    joint = len(targets) > 1
    lines = [
        f"umx-bench on {r['device']}: {r['shards']} {what}, batch {r['batch_size']} × "
        f"{r['seq_dur']} s, {model}, {r['precision']}",
        f"  loader      {r['loader_samples_per_s']:8.1f} samples/s total, {r['loader_samples_per_s_per_worker']:.1f} "
        f"per worker ({who}; first batch after {r['loader_first_batch_s']:.2f} s)",
        f"  step        {r['step_ms']:8.1f} ms per batch of {r['step_batch']} on the device, without the loader "
        f"(= {r['device_samples_per_s']:.1f} samples/s"
        + (f", {r['device_target_samples_per_s']:.1f} target-samples/s" if joint else "")
        + f"; {r.get('step_kind', 'eager')})",
        f"  end to end  {r['train_samples_per_s']:8.1f} samples/s training with the loader"
        + (f" ({r['train_target_samples_per_s']:.1f} target-samples/s)" if joint else "")
        + f"; the device steps take {100 * r['gpu_busy']:.0f} % of the wall time",
        *(["  augment     " + ", ".join(f"{a['augmentation']} {a['ms']:.1f} ms ({100 * a['share_of_step']:.1f} %)"
                                        for a in r["augmentations"]) + " of the step"]
          if r.get("augmentations") else []),
        f"  memory      {memory_line(wm, r['pool'])}",
        ("DATA-BOUND" if r["data_bound"] else "not data-bound") + ":",
    ]
    lines += [f"  - {a}" for a in r["advice"]]
    return "\n".join(lines)
