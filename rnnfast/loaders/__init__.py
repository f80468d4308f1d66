"""Loaders: outside formats -> rnnfast models.

``load(path)`` picks the loader from the extension (then from the file's magic bytes):

=================== ================================================ ==========================
extension           format                                           needs
=================== ================================================ ==========================
.safetensors        native rnnfast file (architecture in metadata),  nothing
                    or any safetensors state_dict + architecture=
.pt .pth            PyTorch state_dict (weights_only=True) +          torch
                    architecture=
.onnx               ONNX graph (RNN/LSTM/GRU nodes + common ops)      onnx
.keras              Keras 3 archive (config.json + model.weights.h5)  h5py
.weights.h5 / .h5   Keras 3 weights + architecture= (Keras config)    h5py
=================== ================================================ ==========================
"""

from __future__ import annotations

import os
from typing import Any

from .. import errors
from .native import is_safetensors, save  # noqa: F401  (re-exported)

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_ZIP_MAGIC = b"PK\x03\x04"


def detect_format(path: str | os.PathLike) -> str:
    """One of "native", "torch", "onnx", "keras", "keras_weights"; FormatError when unknown."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise errors.FormatError(f"{path}: no such file")
    if os.path.isdir(path):
        raise errors.FormatError(f"{path}: is a directory, expected a model file")
    low = path.lower()
    if low.endswith(".safetensors"):
        return "native"
    if low.endswith((".pt", ".pth")):
        return "torch"
    if low.endswith(".onnx"):
        return "onnx"
    if low.endswith(".keras"):
        return "keras"
    if low.endswith((".h5", ".hdf5")):
        return "keras_weights"
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise errors.FormatError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if head.startswith(_HDF5_MAGIC):
        return "keras_weights"
    if head.startswith(_ZIP_MAGIC):
        import zipfile

        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError) as exc:
            raise errors.FormatError(f"{path}: corrupt zip archive: {exc}") from exc
        if "config.json" in names:
            return "keras"
        return "torch"
    if is_safetensors(path):
        return "native"
    if head[:1] in (b"\x08", b"\x0a", b"\x12", b"\x1a", b"\x22", b"\x3a", b"\x42"):  # protobuf field tags
        return "onnx"
    raise errors.FormatError(
        f"{path}: unrecognised model format (magic bytes {head[:8]!r}); supported: .safetensors, .pt/.pth, "
        ".onnx, .keras, .weights.h5"
    )


def load(path: str | os.PathLike, architecture: Any = None, format: str | None = None) -> Any:
    """Load a model file of any supported format into a runnable rnnfast model.

    Parameters
    ----------
    path : the file
    architecture : needed for state_dict-only files (.pt/.pth, plain safetensors: an rnnfast model or
        config; .weights.h5: a Keras config dict, config.json path or .keras path)
    format : force a format ("native", "torch", "onnx", "keras", "keras_weights") instead of detecting it

    Returns an rnnfast layer/Sequential (or an OnnxGraph for ONNX files), callable as ``model(x, lengths)``.
    """
    path = os.fspath(path)
    fmt = format or detect_format(path)
    if fmt == "native":
        from .native import load as load_native

        return load_native(path, architecture)
    if fmt == "torch":
        from .torch_models import load_pt

        return load_pt(path, architecture)
    if fmt == "onnx":
        from .onnx import load_onnx

        return load_onnx(path)
    if fmt == "keras":
        from .keras import load_keras

        return load_keras(path)
    if fmt == "keras_weights":
        from .keras import load_keras_weights

        return load_keras_weights(path, architecture)
    raise errors.UnsupportedError(f"{path}: unknown format {fmt!r}")


def onnx_layers(path: str | os.PathLike) -> dict:
    """The recurrent nodes of an ONNX file as rnnfast layers, name -> layer (see loaders.onnx)."""
    from .onnx import onnx_layers as _onnx_layers

    return _onnx_layers(path)


def from_torch(module: Any, **kwargs: Any) -> Any:
    """Convert a PyTorch module (see loaders.torch_models.from_torch)."""
    from .torch_models import from_torch as _from_torch

    return _from_torch(module, **kwargs)
