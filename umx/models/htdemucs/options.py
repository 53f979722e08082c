"""HTDemucs' options: the `demucs` package's `HTDemucs` constructor arguments, defaulting to Demucs'
own `htdemucs` configuration (its conf/config.yaml), plus how umx trains and separates with it.

Left out of the constructor's arguments: the sparse-attention ones (`t_sparse_*`, `t_mask_*`,
`t_global_window`, `t_sparsity`, `t_auto_sparsity`), which need xformers' CUDA kernels; the
sources, audio channels and rate, which the data decides (`ModelSpec`). Where the constructor takes
None, the option takes its "off" value: `channels_time` 0 (the same as `channels`), `multi_freqs`
none, `t_lr` 0 (the run's `--lr`).

`segment` is the model's window in seconds: apply_model cuts tracks into windows of this length,
and HTDemucs pads shorter input to it. Demucs' export sets it to the length the model was trained on,
which is what 0 (the default) means here: the training crops' length (`--seq-dur`, after any
length-changing augmentation), kept exactly as a fraction of the rate."""

from __future__ import annotations

from dataclasses import dataclass

from ...option_table import option

GROUP = "htdemucs"
T_EMBEDDINGS = ("sin", "cape", "scaled")
OPTIMIZERS = ("adam", "adamw")  # Demucs' optim.optim
WAVEFORM_LOSSES = ("l1", "mse")  # Demucs' optim.loss


@dataclass(frozen=True)
class HTDemucsOptions:
    """HTDemucs' options (`--arch htdemucs`)."""

    # channels
    channels: int = option(48, "channels of the first layer", GROUP, low=1, high=4096)
    channels_time: int = option(0, "channels of the time branch's first layer (0: --channels)", GROUP, low=0,
                                high=4096)
    growth: int = option(2, "channel growth per layer", GROUP, low=1, high=16)
    # STFT
    stft_n_fft: int = option(4096, "the model's STFT window (its hop: a quarter of it)", GROUP, low=16, high=2**16)
    wiener_iters: int = option(0, "Wiener iterations on the model's output (0: complex masking only)", GROUP,
                               low=0, high=100)
    end_iters: int = option(0, "Wiener iterations at the end of training (must equal --wiener-iters)", GROUP,
                            low=0, high=100)
    wiener_residual: bool = option(False, "the Wiener filter also estimates a residual", GROUP)
    cac: bool = option(True, "complex as channels: the spectral branch estimates real and imaginary parts", GROUP)
    # structure
    depth: int = option(4, "encoder and decoder layers", GROUP, low=1, high=16)
    rewrite: bool = option(True, "a 1x1 convolution after each layer", GROUP)
    multi_freqs: tuple[float, ...] = option((), "frequency ratios splitting the bands of the first layers "
                                            "(none: no split)", GROUP, nargs="*", low=0, high=1)
    multi_freqs_depth: int = option(3, "layers the band split applies to", GROUP, low=0, high=16)
    freq_emb: float = option(0.2, "weight of the frequency embedding (0: none)", GROUP, low=0, high=100)
    emb_scale: float = option(10.0, "the frequency embedding's scale", GROUP, low=0, high=1e4)
    emb_smooth: bool = option(True, "initialise the frequency embedding smooth", GROUP)
    # convolutions
    kernel_size: int = option(8, "convolution kernel", GROUP, low=1, high=64)
    time_stride: int = option(2, "stride of the time branch's last layer", GROUP, low=1, high=64)
    stride: int = option(4, "convolution stride", GROUP, low=1, high=64)
    context: int = option(1, "context of the decoder's 1x1 rewrite", GROUP, low=0, high=64)
    context_enc: int = option(0, "context of the encoder's 1x1 rewrite", GROUP, low=0, high=64)
    # normalisation
    norm_starts: int = option(4, "the first layer with group norm", GROUP, low=0, high=64)
    norm_groups: int = option(4, "groups of the group norm", GROUP, low=1, high=256)
    # the DConv residual branch
    dconv_mode: int = option(1, "DConv branches: 1 encoder, 2 decoder, 3 both", GROUP, low=0, high=3)
    dconv_depth: int = option(2, "layers of each DConv branch", GROUP, low=0, high=16)
    dconv_comp: int = option(8, "DConv's channel compression (--channels must be at least this)", GROUP, low=1,
                             high=1024)
    dconv_init: float = option(1e-3, "DConv's initial layer scale", GROUP, low=0, high=10)
    bottom_channels: int = option(0, "channels before the transformer (0: no projection)", GROUP, low=0, high=8192)
    # the cross-domain transformer
    t_layers: int = option(5, "transformer layers (0: none)", GROUP, low=0, high=64)
    t_emb: str = option("sin", "positional embedding", GROUP, choices=T_EMBEDDINGS)
    t_hidden_scale: float = option(4.0, "feed-forward width over the model width", GROUP, low=0, high=64,
                                   low_open=True)
    t_heads: int = option(8, "attention heads (they divide the transformer's width)", GROUP, low=1, high=256)
    t_dropout: float = option(0.0, "transformer dropout", GROUP, low=0, high=1, high_open=True)
    t_max_positions: int = option(10000, "positions of the scaled embedding", GROUP, low=1, high=2**24)
    t_norm_in: bool = option(True, "layer norm before the transformer", GROUP)
    t_norm_in_group: bool = option(False, "that norm over the whole group", GROUP)
    t_group_norm: bool = option(False, "group norm inside the transformer", GROUP)
    t_norm_first: bool = option(True, "norm before attention and feed-forward", GROUP)
    t_norm_out: bool = option(True, "group norm after each transformer layer", GROUP)
    t_max_period: float = option(10000.0, "the sin embedding's longest period", GROUP, low=1, high=1e9)
    t_weight_decay: float = option(0.0, "weight decay of the transformer's parameters", GROUP, low=0, high=10)
    t_lr: float = option(0.0, "learning rate of the transformer's parameters (0: --lr)", GROUP, low=0, high=10)
    t_layer_scale: bool = option(True, "layer scale in the transformer", GROUP)
    t_gelu: bool = option(True, "GELU (else ReLU) in the transformer", GROUP)
    t_weight_pos_embed: float = option(1.0, "weight of the positional embedding", GROUP, low=0, high=100)
    t_sin_random_shift: int = option(0, "random shift of the sin embedding in training", GROUP, low=0, high=2**20)
    t_cape_mean_normalize: bool = option(True, "CAPE: centre the positions", GROUP)
    t_cape_augment: bool = option(True, "CAPE: random shifts and scales in training", GROUP)
    t_cape_glob_loc_scale: tuple[float, ...] = option((5000.0, 1.0, 1.4), "CAPE: global shift, local shift and "
                                                      "scale", GROUP, nargs="*", low=0, high=1e6)
    t_cross_first: bool = option(False, "cross-attention first", GROUP)
    rescale: float = option(0.1, "initial weight rescaling (0: none)", GROUP, low=0, high=10)
    segment: float = option(0.0, "the model's window in s (0: the training crops' length, as Demucs exports it)",
                            GROUP, low=0, high=3600)
    use_train_segment: bool = option(True, "in evaluation, pad input to the model's window", GROUP)
    # training
    waveform_loss: str = option("l1", "Demucs' loss on the waveforms: l1 or mse", GROUP, choices=WAVEFORM_LOSSES)
    source_weights: tuple[float, ...] = option((), "weight of each target in the loss, in --targets order "
                                               "(none: all 1; Demucs' `weights`)", GROUP, nargs="*", low=0, high=1e6)
    optimizer: str = option("adam", "Demucs' optim.optim: adam or adamw (with --weight-decay)", GROUP,
                            choices=OPTIMIZERS)
    # separation (Demucs' apply_model)
    shifts: int = option(1, "separation: random shifts averaged (the shift trick; 0: none)", GROUP, low=0, high=64)
    overlap: float = option(0.25, "separation: overlap of the windows", GROUP, low=0, high=1, high_open=True)
    transition_power: float = option(1.0, "separation: power of the windows' triangular blend", GROUP, low=1,
                                     high=64)
