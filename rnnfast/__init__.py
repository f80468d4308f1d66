"""rnnfast: fast CPU recurrent networks (RNN, LSTM, GRU) with a C core.

>>> import numpy as np, rnnfast
>>> lstm = rnnfast.LSTM(8, 16, seed=0)
>>> out, (h_n, c_n) = lstm(np.zeros((5, 2, 8), np.float32))
>>> out.shape, h_n.shape
((5, 2, 16), (1, 2, 16))
"""

from . import attention, attention_train, errors, train
from ._threads import get_num_threads, set_num_threads
from .errors import RnnfastError
from .attention import AdditiveAttention, DotAttention, GeneralAttention, MultiheadAttention, ScaledDotAttention
from .layers import GRU, LSTM, RNN, layer_from_config
from .loaders import load, onnx_layers, save
from .loaders.torch import from_torch
from .models import Embedding, Linear, LogSoftmax, ReLU, Reversed, Sequential, Sigmoid, Softmax, Tanh, model_from_config

from .seq2seq import Seq2Seq

__version__ = "0.1.0"

__all__ = [
    "RNN",
    "LSTM",
    "GRU",
    "layer_from_config",
    "from_torch",
    "set_num_threads",
    "get_num_threads",
    "errors",
    "attention",
    "attention_train",
    "AdditiveAttention",
    "DotAttention",
    "GeneralAttention",
    "MultiheadAttention",
    "ScaledDotAttention",
    "Seq2Seq",
    "train",
    "RnnfastError",
    "__version__",
    "load",
    "save",
    "onnx_layers",
    "Embedding",
    "Linear",
    "LogSoftmax",
    "ReLU",
    "Reversed",
    "Sequential",
    "Sigmoid",
    "Softmax",
    "Tanh",
    "model_from_config",
]
