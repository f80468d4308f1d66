"""rnnfast: fast CPU recurrent networks (RNN, LSTM, GRU) with a C core.

>>> import numpy as np, rnnfast
>>> lstm = rnnfast.LSTM(8, 16, seed=0)
>>> out, (h_n, c_n) = lstm(np.zeros((5, 2, 8), np.float32))
>>> out.shape, h_n.shape
((5, 2, 16), (1, 2, 16))
"""

import os as _os

# SciPy's OpenBLAS (the core's BLAS) keeps its idle worker threads spinning for 2**28 cycles (~0.1 s) after
# every threaded GEMM; the C core's OpenMP team, which often runs right after one (training: input
# projection, then the step loops), then shares the cores with them. Measured: one BPTT forward of an
# LSTM(64, 512) at B=32, T=100 on 2 cores took 71 ms instead of 50 ms. OpenBLAS reads this variable once,
# when SciPy's linear algebra is first imported: a value the user set wins, and importing scipy.linalg
# before rnnfast keeps OpenBLAS' default (docs/training.md).
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

from . import attention, attention_train, errors, train  # noqa: E402
from ._threads import get_num_threads, set_num_threads  # noqa: E402
from .errors import RnnfastError  # noqa: E402
from .attention import AdditiveAttention, DotAttention, GeneralAttention, MultiheadAttention, ScaledDotAttention  # noqa: E402
from .layers import GRU, LSTM, RNN, layer_from_config  # noqa: E402
from .loaders import load, onnx_layers, save  # noqa: E402
from .loaders.torch import from_torch  # noqa: E402
from .models import Embedding, Linear, LogSoftmax, ReLU, Reversed, Sequential, Sigmoid, Softmax, Tanh, model_from_config  # noqa: E402

from .seq2seq import Seq2Seq  # noqa: E402

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
