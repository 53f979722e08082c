"""umx.compat: the private torch APIs umx uses still behave as on the torch they were checked on."""

import os

import pytest
import torch

from umx import compat


def _major_minor(version: str) -> tuple[int, int]:
    major, minor = version.split("+")[0].split(".")[:2]
    return int(major), int(minor)


def test_torch_is_the_version_the_private_apis_were_checked_on():
    have, checked = _major_minor(torch.__version__), _major_minor(compat.CHECKED_ON)
    assert have == checked, (
        f"torch is {torch.__version__}, but umx/compat.py's wrappers of private torch APIs "
        f"(UntypedStorage._new_shared, nn.LSTM._flat_weights, torch._VF.lstm) were checked on torch "
        f"{compat.CHECKED_ON}: re-check each against this torch's source (and run tests/test_compat.py, "
        f"tests/test_step.py, tests/test_loader.py), then set compat.CHECKED_ON to {torch.__version__.split('+')[0]}")


def test_new_shared_storage_is_shared_with_a_forked_child():
    storage = compat.new_shared_storage(4096)
    assert isinstance(storage, torch.UntypedStorage) and storage.nbytes() == 4096 and storage.is_shared()
    t = torch.empty(0, dtype=torch.uint8).set_(storage, 0, (4096,))
    t.numpy()[:] = 0
    pid = os.fork()
    if pid == 0:  # the child writes through its copy of the mapping (numpy only: no torch threads after fork)
        try:
            t.numpy()[100:200] = 7
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    seen = t.numpy()
    assert (seen[100:200] == 7).all() and not seen[:100].any() and not seen[200:].any()


def test_lstm_weights_are_the_module_parameters_in_kernel_order():
    lstm = torch.nn.LSTM(5, 4, num_layers=2, bidirectional=True)
    got = compat.lstm_weights(lstm)
    params = list(lstm.parameters())
    assert len(got) == len(params) == 16 and all(a is b for a, b in zip(got, params))
    assert got[:4] == [lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0]


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("training", [True, False])
def test_lstm_layer_is_a_one_layer_nn_lstm_bit_for_bit(bidirectional, batch_first, bias, training):
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(7, 5, bias=bias, bidirectional=bidirectional, batch_first=batch_first).train(training)
    dirs = 2 if bidirectional else 1
    x = torch.randn((3, 11, 7) if batch_first else (11, 3, 7), requires_grad=True)
    hx = (torch.randn(dirs, 3, 5), torch.randn(dirs, 3, 5))
    outs = []
    for f in (lambda: lstm(x, hx)[0],
              lambda: compat.lstm_layer(x, hx, compat.lstm_weights(lstm), bias, bidirectional, batch_first,
                                        training)):
        lstm.zero_grad()
        x.grad = None
        y = f()
        (y * torch.arange(y.numel()).reshape(y.shape)).sum().backward()
        outs.append([y.detach(), x.grad.clone(), *[p.grad.clone() for p in lstm.parameters()]])
    assert outs[0][0].shape == ((3, 11, 5 * dirs) if batch_first else (11, 3, 5 * dirs))
    for a, b in zip(*outs, strict=True):
        assert torch.equal(a, b)
