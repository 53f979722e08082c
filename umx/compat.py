"""The private torch APIs umx relies on, each behind one small public function.

torch may change or drop a private API in any release. Each is used only here, so a
torch upgrade means checking this file (tests/test_compat.py fails on a torch other
than the CHECKED_ON major.minor, to say so) and nothing else.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

CHECKED_ON = "2.13.0"  # the torch version these wrappers were verified against


def new_shared_storage(nbytes: int) -> torch.UntypedStorage:
    """An untyped CPU storage of `nbytes` bytes, allocated in shared memory at once.

    Wraps `torch.UntypedStorage._new_shared`, what `Tensor.share_memory_()` uses inside.
    A loader worker fills a batch straight into shared memory this way; allocating a
    private tensor and calling `share_memory_()` would allocate and copy it twice.
    """
    return torch.UntypedStorage._new_shared(nbytes)


def lstm_weights(lstm: nn.LSTM) -> list[Tensor]:
    """The parameters of `lstm` in the order its kernel takes them: per layer and direction
    `weight_ih, weight_hh[, bias_ih, bias_hh]` (then `weight_hr` with projections).

    Wraps `nn.LSTM._flat_weights`, the list nn.LSTM.forward passes to the kernel; the
    same tensors as `lstm.parameters()`, so gradients reach the module's parameters.
    """
    return list(lstm._flat_weights)


def lstm_layer(x: Tensor, hx: tuple[Tensor, Tensor], weights: list[Tensor], has_bias: bool, bidirectional: bool,
               batch_first: bool, training: bool) -> Tensor:
    """The output of one LSTM layer (no dropout) on `x` from state `hx = (h0, c0)`,
    `[directions, batch, hidden]` each; `weights`: that layer's slice of `lstm_weights`.

    Wraps `torch._VF.lstm`, the kernel nn.LSTM.forward calls (cuDNN on CUDA), with one
    layer and no dropout. Calling it a layer at a time lets the caller draw the dropout
    between layers itself (see model.lstm_layer_by_layer); nn.LSTM has no public way to.
    """
    return torch._VF.lstm(x, hx, weights, has_bias, 1, 0.0, training, bidirectional, batch_first)[0]
