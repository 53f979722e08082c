"""BS-RoFormer's and Mel-Band RoFormer's options: the `bs-roformer` package's constructor arguments,
defaulting to the architecture MSST trains (its MUSDB18 configs, `configs/config_musdb18_*.yaml`).

Where the package's own defaults differ from MSST's vendored copy, the option takes MSST's (the
README's RoFormer section): one residual stream (the package defaults to 4 hyper-connection streams, which
MSST and the paper do not have), `zero_dc` on, and for Mel-Band RoFormer no value residual and no
linear-attention layer. Inference: MSST's windowed overlap-add (chunk, overlap, batch of chunks)."""

from __future__ import annotations

from dataclasses import dataclass

from ...option_table import option

GROUP = "roformer"
OPTIMIZERS = ("adam", "adamw")  # MSST's training.optimizer values umx honours
# MSST's BS-RoFormer bands (the package's default): 62 bands of the 1025 bins of a 2048-point STFT
MSST_BANDS = (2,) * 24 + (4,) * 12 + (12,) * 8 + (24,) * 8 + (48,) * 8 + (128, 129)
WINDOWS = (4096, 2048, 1024, 512, 256)  # the multi-resolution STFT loss's windows


def _common(depth: int, mask_estimator_depth: int):
    """The fields both RoFormers share, with one architecture's defaults (MSST's MUSDB18 configs)."""
    return dict(
        dim=option(192, "model width", GROUP, low=1, high=8192),
        depth=option(depth, "blocks of time and frequency transformers", GROUP, low=1, high=256),
        time_transformer_depth=option(1, "time transformer layers per block", GROUP, low=1, high=64),
        freq_transformer_depth=option(1, "frequency transformer layers per block", GROUP, low=1, high=64),
        dim_head=option(64, "attention head width", GROUP, low=1, high=1024),
        heads=option(8, "attention heads", GROUP, low=1, high=256),
        attn_dropout=option(0.1, "attention dropout", GROUP, low=0, high=1, high_open=True),
        ff_dropout=option(0.1, "feed-forward dropout", GROUP, low=0, high=1, high_open=True),
        flash_attn=option(True, "fused attention (torch's scaled_dot_product_attention)", GROUP),
        stft_n_fft=option(2048, "the model's STFT window", GROUP, low=16, high=2**16),
        stft_hop_length=option(512, "the model's STFT hop", GROUP, low=1, high=2**16),
        stft_win_length=option(2048, "the model's STFT window length", GROUP, low=16, high=2**16),
        stft_normalized=option(False, "normalised STFT", GROUP),
        zero_dc=option(True, "zero the DC bin of the masks (MSST: on; the package's default: off)", GROUP),
        mask_estimator_depth=option(mask_estimator_depth, "mask estimator MLP depth", GROUP, low=1, high=16),
        num_residual_streams=option(1, "hyper-connection residual streams (MSST and the paper: 1; the package's "
                                    "default: 4)", GROUP, low=1, high=16),
        multi_stft_resolution_loss_weight=option(1.0, "weight of the multi-resolution STFT loss", GROUP, low=0,
                                                 high=1e6),
        multi_stft_resolutions_window_sizes=option(WINDOWS, "the STFT loss's windows", GROUP, nargs="*", low=16,
                                                   high=2**16),
        multi_stft_hop_size=option(147, "the STFT loss's hop", GROUP, low=1, high=2**16),
        multi_stft_normalized=option(False, "normalised STFTs in the STFT loss", GROUP),
        use_torch_checkpoint=option(False, "activation checkpointing of the transformers (torch.utils.checkpoint): "
                                    "less memory, one more forward per step", GROUP),
        optimizer=option("adam", "MSST's training.optimizer: adam or adamw (with --weight-decay)", GROUP,
                         choices=OPTIMIZERS),
        chunk_size=option(131584, "inference: chunk length in samples (MSST's audio.chunk_size)", GROUP, low=16,
                          high=2**24),
        num_overlap=option(4, "inference: chunks overlapping each sample", GROUP, low=1, high=64),
        inference_batch_size=option(1, "inference: chunks per batch", GROUP, low=1, high=1024),
    )


def _dataclass(name: str, doc: str, fields: dict) -> type:
    """A frozen dataclass of option fields (the annotations from each default's type)."""
    annotations = {k: (tuple[int, ...] if isinstance(f.default, tuple) else type(f.default)) for k, f in fields.items()}
    cls = type(name, (), {"__annotations__": annotations, "__doc__": doc, "__module__": __name__, **fields})
    return dataclass(frozen=True)(cls)


BSRoformerOptions = _dataclass("BSRoformerOptions", "BS-RoFormer's options (`--arch bs_roformer`).", {
    **_common(depth=6, mask_estimator_depth=2),
    "freqs_per_bands": option(MSST_BANDS, "bins per band; they add up to stft_n_fft / 2 + 1", GROUP, nargs="*",
                              low=1, high=2**15),
})
MelBandRoformerOptions = _dataclass("MelBandRoformerOptions", "Mel-Band RoFormer's options "
                                    "(`--arch mel_band_roformer`).", {
    **_common(depth=8, mask_estimator_depth=2),
    "num_bands": option(60, "mel bands", GROUP, low=1, high=2**12),
})
