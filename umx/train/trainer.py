"""The open-unmix training recipe on a streamed shard set.

Adam(lr, weight_decay) · ReduceLROnPlateau(gamma, patience, cooldown=10) ·
early stopping on the validation loss · MSE between magnitude spectrograms ·
validation on the full tracks of the valid split, one per batch. The data
stream, the device augmentation and dropout are seeded per (seed, epoch), so
`--checkpoint` resumes the very history an uninterrupted run would write.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..errors import UmxError
from ..model import OpenUnmix, Spectrogram, bandwidth_to_max_bin, load_target
from ..prep import stats as stats_mod
from ..shards import manifest as mf
from . import sampling
from .augment import Augment, mix_and_target
from .loader import TrainStream, load_split
from .outputs import read_results, save_torch, write_separator_json
from ..shards.storage import write_json

# open-unmix's per-dataset defaults, applied when the option is not given
LAYOUT_DEFAULTS = {
    "musdb": {"samples_per_track": 64, "source_augmentations": ["gain", "channelswap"], "random_track_mix": True},
}
FALLBACK_DEFAULTS = {"samples_per_track": 1, "source_augmentations": [], "random_track_mix": False}


@dataclass
class TrainConfig:
    """Every option of open-unmix's train.py (same names and defaults) plus umx's own."""

    shards: str = ""
    target: str = "vocals"
    output: str = "open-unmix"
    checkpoint: str | None = None
    model: str | None = None
    no_cuda: bool = False
    epochs: int = 1000
    batch_size: int = 16
    patience: int = 140
    seq_dur: float = 6.0
    unidirectional: bool = False
    hidden_size: int = 512
    nfft: int = 4096
    nhop: int = 1024
    lr: float = 0.001
    lr_decay_patience: int = 80
    lr_decay_gamma: float = 0.3
    weight_decay: float = 0.00001
    bandwidth: int = 16000
    nb_channels: int = 2
    nb_workers: int = 0
    quiet: bool = False
    seed: int = 42
    # None = open-unmix's default for the shard set's layout
    samples_per_track: int | None = None
    source_augmentations: list[str] | None = None
    random_track_mix: bool | None = None
    pool_size: int = 8

    def resolved(self, layout: str) -> "TrainConfig":
        """Fill layout-dependent defaults; aligned data is never remixed or augmented."""
        defaults = LAYOUT_DEFAULTS.get(layout, FALLBACK_DEFAULTS)
        values = {k: (getattr(self, k) if getattr(self, k) is not None else v) for k, v in defaults.items()}
        if layout == "aligned":
            values.update(source_augmentations=[], random_track_mix=False)
        return dataclasses.replace(self, **values)


class EarlyStopping:
    """open-unmix's early stopping: stop after `patience` epochs without a lower loss."""

    def __init__(self, patience: int, best: float | None = None, num_bad_epochs: int = 0):
        self.patience, self.best, self.num_bad_epochs = patience, best, num_bad_epochs

    def step(self, loss: float) -> bool:
        if self.best is None:
            self.best = loss
            return False
        if math.isnan(loss):
            return True
        if loss < self.best or self.patience == 0:
            self.best, self.num_bad_epochs = loss, 0
        else:
            self.num_bad_epochs += 1
        return self.num_bad_epochs >= self.patience


def input_statistics(manifest: mf.Manifest, nfft: int, nhop: int, quiet: bool) -> dict:
    """The manifest's statistics for this STFT, else computed once and cached."""
    stats = manifest.statistics(nfft, nhop)
    if stats is not None:
        return stats
    digest = hashlib.sha256("".join(s.sha256 for s in manifest.shards("train")).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("UMX_CACHE", Path.home() / ".cache" / "umx")) / "stats"
    path = cache / f"{digest}-{mf.stats_key(nfft, nhop)}.json"
    if path.is_file():
        return json.loads(path.read_text())
    stats = stats_mod.from_shard_set(manifest, nfft, nhop, progress=not quiet)
    cache.mkdir(parents=True, exist_ok=True)
    write_json(path, stats)
    return stats


class Trainer:
    """One training run: build everything from the config, then `fit()`."""

    def __init__(self, config: TrainConfig):
        self.manifest = mf.load(config.shards)
        self.cfg = cfg = config.resolved(self.manifest.layout)
        use_cuda = not cfg.no_cuda and torch.cuda.is_available()
        self.device = torch.device("cuda" if use_cuda else "cpu")
        self.out = Path(cfg.output).expanduser()
        torch.manual_seed(cfg.seed)  # model initialisation, as open-unmix seeds it
        np.random.seed(cfg.seed)

        rate = self.manifest.sample_rate
        seq_len = int(cfg.seq_dur * rate) if cfg.seq_dur > 0 else None
        if seq_len is not None and seq_len < cfg.nfft:
            raise UmxError(f"--seq-dur {cfg.seq_dur} s is shorter than one STFT window (--nfft {cfg.nfft})")
        self.stream = TrainStream(self.manifest, cfg.target, seq_len, cfg.batch_size if seq_len else 1,
                                  cfg.samples_per_track, cfg.pool_size, cfg.seed)
        self.valid_tracks = load_split(self.manifest, cfg.target, "valid")
        self.encoder = Spectrogram(cfg.nfft, cfg.nhop, mono=cfg.nb_channels == 1).to(self.device)
        self.augment = Augment(cfg.source_augmentations, cfg.random_track_mix).to(self.device)
        self.model = self._build_model(rate)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, factor=cfg.lr_decay_gamma, patience=cfg.lr_decay_patience, cooldown=10)
        self.stopper = EarlyStopping(cfg.patience)
        self.history = {"train_loss_history": [], "valid_loss_history": [], "train_time_history": [],
                        "lr_history": [], "best_epoch": 0, "epochs_trained": 0}
        if cfg.checkpoint:
            self._resume(cfg.checkpoint)

    def _build_model(self, rate: int) -> OpenUnmix:
        cfg = self.cfg
        if cfg.model:
            model = load_target(cfg.model, cfg.target, self.device)
            model.train()
            return model
        if cfg.checkpoint:  # weights come from the checkpoint; statistics are in them
            mean = std = None
        else:
            s = input_statistics(self.manifest, cfg.nfft, cfg.nhop, cfg.quiet)
            mean, std = np.asarray(s["mean"]), np.asarray(s["std"])
        return OpenUnmix(
            nb_bins=cfg.nfft // 2 + 1, nb_channels=cfg.nb_channels, hidden_size=cfg.hidden_size,
            unidirectional=cfg.unidirectional, input_mean=mean, input_scale=std,
            max_bin=bandwidth_to_max_bin(rate, cfg.nfft, cfg.bandwidth),
        ).to(self.device)

    def _resume(self, folder: str) -> None:
        results, ckpt = read_results(Path(folder), self.cfg.target)
        self.model.load_state_dict(ckpt["state_dict"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.stopper = EarlyStopping(self.cfg.patience, results["best_loss"], results["num_bad_epochs"])
        for key in self.history:
            self.history[key] = results.get(key, [])  # lr_history is umx's own

    # --- one epoch -------------------------------------------------------
    def _loader(self) -> DataLoader:
        cuda = self.device.type == "cuda"
        return DataLoader(self.stream, batch_size=None, num_workers=self.cfg.nb_workers, pin_memory=cuda,
                          prefetch_factor=4 if self.cfg.nb_workers else None)

    def train_epoch(self, epoch: int) -> float:
        cfg = self.cfg
        self.model.train()
        self.stream.set_epoch(epoch)
        torch.manual_seed(sampling.torch_seed(cfg.seed, sampling.DROPOUT, epoch))
        gen = sampling.torch_generator(cfg.seed, sampling.AUGMENT, epoch, device=self.device)
        losses, seen, start = [], 0, time.time()
        total = self.stream.batches_per_epoch(cfg.nb_workers)
        bar = tqdm(self._loader(), total=total, desc=f"epoch {epoch}", leave=False, disable=cfg.quiet)
        for batch in bar:
            pcm = batch.audio.to(self.device, non_blocking=True)
            x, y = mix_and_target(self.augment(pcm, gen))
            self.optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(self.model(self.encoder(x)), self.encoder(y))
            loss.backward()
            self.optimizer.step()
            losses.append(loss.item())
            if not math.isfinite(losses[-1]):
                raise UmxError(f"loss became {losses[-1]} at epoch {epoch}, step {len(losses)}; stopping")
            seen += pcm.shape[0]
            bar.set_postfix(loss=f"{np.mean(losses):.4f}", samples_per_s=f"{seen / (time.time() - start):.1f}")
        return float(np.mean(losses))

    @torch.no_grad()
    def validate(self) -> float:
        self.model.eval()
        losses = []
        for _, pcm in self.valid_tracks:
            wav = pcm.to(self.device).float()[None] / 32768.0
            x, y = mix_and_target(wav)
            losses.append(torch.nn.functional.mse_loss(self.model(self.encoder(x)), self.encoder(y)).item())
        return float(np.mean(losses))

    # --- the run ---------------------------------------------------------
    def fit(self) -> Path:
        cfg, h = self.cfg, self.history
        self.out.mkdir(parents=True, exist_ok=True)
        write_separator_json(self.out, cfg.nfft, cfg.nhop, self.manifest.sample_rate, cfg.nb_channels)
        first = h["epochs_trained"] + 1
        if not cfg.quiet:
            print(f"training '{cfg.target}' on {self.device} from {self.manifest.location}: "
                  f"{self.stream.samples_per_epoch()} samples/epoch, batch {self.stream.batch_size}")
        epochs = tqdm(range(first, cfg.epochs + 1), desc="training", disable=cfg.quiet,
                      initial=first - 1, total=cfg.epochs)
        for epoch in epochs:
            start = time.time()
            train_loss = self.train_epoch(epoch)
            valid_loss = self.validate()
            self.scheduler.step(valid_loss)
            stop = self.stopper.step(valid_loss)
            h["train_loss_history"].append(train_loss)
            h["valid_loss_history"].append(valid_loss)
            h["train_time_history"].append(time.time() - start)
            h["lr_history"].append(self.optimizer.param_groups[0]["lr"])  # after the plateau step
            h["epochs_trained"] = epoch
            is_best = valid_loss == self.stopper.best
            if is_best:
                h["best_epoch"] = epoch
            self._save(epoch, is_best)
            epochs.set_postfix(train_loss=f"{train_loss:.4f}", val_loss=f"{valid_loss:.4f}",
                               lr=self.optimizer.param_groups[0]["lr"])
            if stop:
                if not cfg.quiet:
                    print(f"early stopping after epoch {epoch} (no improvement for {cfg.patience} epochs)")
                break
        return self.out

    def _save(self, epoch: int, is_best: bool) -> None:
        cfg, target = self.cfg, self.cfg.target
        state = self.model.state_dict()
        if is_best:
            save_torch(state, self.out / f"{target}.pth")
        save_torch({"epoch": epoch + 1, "state_dict": state, "best_loss": self.stopper.best,
                    "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()},
                   self.out / f"{target}.chkpnt")
        args = dataclasses.asdict(cfg)
        args["dataset"] = self.manifest.layout
        args["sample_rate"] = self.manifest.sample_rate
        write_json(self.out / f"{target}.json", {
            "args": args, "best_loss": self.stopper.best, "num_bad_epochs": self.stopper.num_bad_epochs,
            **self.history,
        })


def train(config: TrainConfig) -> Path:
    """Train one target model; returns the output directory."""
    return Trainer(config).fit()
