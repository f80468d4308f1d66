"""PyTorch modules -> rnnfast layers. torch is needed only by the caller; it is never imported here
at module level (``import rnnfast`` must not import torch)."""

from __future__ import annotations

from typing import Any

from ..errors import UnsupportedError
from ..layers import GRU, LSTM, RNN, _to_numpy


def from_torch_rnn(module: Any):
    """torch.nn.RNN / LSTM / GRU -> the equivalent rnnfast layer with the same weights."""
    kind = type(module).__name__
    common = dict(
        input_size=module.input_size,
        hidden_size=module.hidden_size,
        num_layers=module.num_layers,
        bias=module.bias,
        batch_first=module.batch_first,
        dropout=module.dropout,
        bidirectional=module.bidirectional,
    )
    if kind == "LSTM":
        layer = LSTM(proj_size=getattr(module, "proj_size", 0), **common)
    elif kind == "GRU":
        layer = GRU(**common)
    elif kind == "RNN":
        layer = RNN(nonlinearity=module.nonlinearity, **common)
    else:
        raise UnsupportedError(f"from_torch_rnn: expected torch.nn.RNN, LSTM or GRU, got {kind}")
    layer.load_state_dict({k: _to_numpy(v) for k, v in module.state_dict().items()})
    return layer


def from_torch(module: Any, **kwargs: Any):
    """A torch.nn module -> the rnnfast equivalent (RNN/LSTM/GRU here; other layers and containers in
    torch_models, which takes the keyword options documented there)."""
    if type(module).__name__ in ("RNN", "LSTM", "GRU") and not kwargs:
        return from_torch_rnn(module)
    if type(module).__name__ == "MultiheadAttention":
        from ..attention import MultiheadAttention

        return MultiheadAttention.from_torch(module, **kwargs)
    try:
        from . import torch_models
    except ImportError:
        torch_models = None
    if torch_models is not None and hasattr(torch_models, "from_torch_module"):
        return torch_models.from_torch_module(module, **kwargs)
    raise UnsupportedError(f"from_torch: no rnnfast equivalent for {type(module).__name__}")
