"""Keras 3 models -> rnnfast: ``.keras`` archives and ``.weights.h5`` files, read with h5py (no Keras).

A ``.keras`` file is a zip of ``config.json`` (the architecture) and ``model.weights.h5``. A
``.weights.h5`` file holds only weights; the architecture comes from the user (the Keras config dict of
``model.get_config()`` / ``config.json``, or a path to a ``config.json`` or ``.keras`` file).

Supported layers: InputLayer, Embedding, LSTM, GRU (reset_after True and False), SimpleRNN,
Bidirectional (merge_mode="concat"), Dense (+ its activation), Activation, Softmax, Dropout (ignored),
TimeDistributed(Dense). Models: Sequential, and Functional models that are a plain chain.

Layout conversions (Keras -> PyTorch's canonical layout)::

    kernel (I, G*H) -> weight_ih (G*H, I) = kernel.T       recurrent_kernel (H, G*H) -> weight_hh = .T
    LSTM gates  Keras [i f c o] = torch [i f g o]         (same order; bias -> bias_ih, bias_hh = 0)
    GRU  gates  Keras [z r h]   -> torch [r z n]          (blocks 1, 0, 2)
    GRU reset_after=True: bias (2, 3H) = [input bias; recurrent bias] -> bias_ih, bias_hh
    GRU reset_after=False: bias (3H,) -> bias_ih, bias_hh = 0
    Dense kernel (I, O) -> Linear weight (O, I);  Embedding embeddings (V, E) -> weight

Keras RNN layers are batch-first: the rnnfast layers are built with ``batch_first=True``.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Callable

import numpy as np

from .. import errors
from .. import models as M

MAX_CONFIG_BYTES = 64 * 1024 * 1024
# declared (uncompressed) size of an archive member may exceed its stored size by this factor at most
MAX_ZIP_RATIO = 200


def _h5py():
    try:
        import h5py
    except ImportError as exc:
        raise errors.UnsupportedError(
            "h5py is not installed: it is needed to read Keras weight files"
        ) from exc
    return h5py


def _gate_blocks(a: np.ndarray, order: list[int], axis: int = 0) -> np.ndarray:
    blocks = np.split(a, len(order), axis=axis)
    return np.concatenate([blocks[i] for i in order], axis=axis)


_ACT_ONNX = {
    "sigmoid": ("Sigmoid", None, None),
    "tanh": ("Tanh", None, None),
    "relu": ("Relu", None, None),
    "hard_sigmoid": ("HardSigmoid", 1.0 / 6.0, 0.5),  # Keras 3: relu6(x + 3) / 6
    "linear": ("Affine", 1.0, 0.0),
    "elu": ("Elu", 1.0, None),
    "softsign": ("Softsign", None, None),
    "softplus": ("Softplus", None, None),
}


def _act_name(act: Any, where: str) -> str:
    if isinstance(act, Mapping):  # serialized function
        act = act.get("config", act.get("class_name"))
    if not isinstance(act, str):
        raise errors.UnsupportedError(f"{where}: activation {act!r}")
    return act


class _Weights:
    """Access to the datasets of a Keras 3 weights file, by layer name, with size checks."""

    def __init__(self, h5: Any, path: str, file_size: int) -> None:
        self.h5, self.path, self.file_size = h5, path, file_size
        self.by_name: dict[str, str] = {}
        if "layers" in h5:
            self._index(h5["layers"], "layers")

    def _index(self, group: Any, prefix: str) -> None:
        for key in group:
            sub = group[key]
            if not hasattr(sub, "keys"):
                continue
            v = sub.get("vars")
            name = v.attrs.get("name") if v is not None else None
            if isinstance(name, bytes):
                name = name.decode()
            if isinstance(name, str) and name not in self.by_name:
                self.by_name[name] = f"{prefix}/{key}"

    def group(self, layer_name: str, class_name: str, occurrence: int) -> str:
        if layer_name in self.by_name:
            return self.by_name[layer_name]
        snake = re.sub(r"(?<!^)(?=[A-Z])", "_", class_name).lower().replace("simple_r_n_n", "simple_rnn")
        key = f"layers/{snake}" + (f"_{occurrence}" if occurrence else "")
        if key in self.h5:
            return key
        raise errors.StateDictError(
            f"{self.path}: no weights for layer {layer_name!r} ({class_name}) in the file"
        )

    def vars(self, gpath: str, n: int, shapes: list[tuple[int, ...] | None]) -> list[np.ndarray]:
        """The first n variables of a group, each checked against an expected shape before reading."""
        vpath = f"{gpath}/vars"
        if vpath not in self.h5:
            raise errors.StateDictError(f"{self.path}: missing group {vpath!r}")
        g = self.h5[vpath]
        out = []
        for i in range(n):
            key = str(i)
            if key not in g:
                raise errors.StateDictError(f"{self.path}: missing tensor {vpath}/{key}")
            ds = g[key]
            if not hasattr(ds, "shape") or not hasattr(ds, "dtype"):
                raise errors.FormatError(f"{self.path}: {vpath}/{key} is not a dataset")
            if ds.dtype.kind != "f":
                raise errors.DTypeError(
                    f"{self.path}: tensor {vpath}/{key} expected a float dtype, got {ds.dtype}"
                )
            want = shapes[i] if i < len(shapes) else None
            if want is not None and tuple(ds.shape) != tuple(want):
                raise errors.StateDictError(
                    f"{self.path}: tensor {vpath}/{key} expected shape {tuple(want)}, got {tuple(ds.shape)}"
                )
            nbytes = math.prod(ds.shape) * ds.dtype.itemsize
            try:
                stored = ds.id.get_storage_size()
            except Exception:  # noqa: BLE001
                stored = 0
            if nbytes > max(stored, 0) * MAX_ZIP_RATIO + (
                1 << 20
            ) or nbytes > self.file_size * MAX_ZIP_RATIO + (1 << 20):
                raise errors.FormatError(
                    f"{self.path}: tensor {vpath}/{key} declares shape {tuple(ds.shape)} ({nbytes} bytes) but "
                    f"stores only {stored} bytes (lying or hostile file)"
                )
            try:
                out.append(np.asarray(ds[()], dtype=np.float32))
            except Exception as exc:
                raise errors.FormatError(f"{self.path}: cannot read tensor {vpath}/{key}: {exc}") from exc
        return out


def _unwrap(cfg: Any) -> tuple[str, dict]:
    if not isinstance(cfg, Mapping) or "class_name" not in cfg or not isinstance(cfg.get("config"), Mapping):
        raise errors.FormatError(
            f"Keras layer config must have class_name and config, got {str(cfg)[:100]!r}"
        )
    return str(cfg["class_name"]), dict(cfg["config"])


def _chain(model_cfg: Mapping, where: str) -> list[tuple[str, dict]]:
    """The layers of a Sequential or chain-Functional Keras config, in order, as (class_name, config)."""
    if "class_name" in model_cfg:
        cls, cfg = _unwrap(model_cfg)
    else:  # model.get_config() of a Sequential or Functional
        cls = "Functional" if "input_layers" in model_cfg else "Sequential"
        cfg = dict(model_cfg)
    layers = cfg.get("layers")
    if not isinstance(layers, list):
        raise errors.FormatError(f"{where}: model config has no 'layers' list")
    if cls == "Sequential":
        return [_unwrap(entry) for entry in layers]
    if cls in ("Functional", "Model"):
        out = []
        prev = None
        for entry in layers:
            c, lc = _unwrap(entry)
            name = lc.get("name")
            inbound = entry.get("inbound_nodes") or []
            sources = []
            for node in inbound:
                args = node.get("args", []) if isinstance(node, Mapping) else []
                for a in args:
                    hist = a.get("config", {}).get("keras_history") if isinstance(a, Mapping) else None
                    if hist:
                        sources.append(hist[0])
            if prev is None:
                if sources:
                    raise errors.UnsupportedError(
                        f"{where}: Functional model that does not start with its input"
                    )
            elif sources != [prev]:
                raise errors.UnsupportedError(
                    f"{where}: only Functional models that are a plain chain of layers are supported "
                    f"(layer {name!r} takes {sources})"
                )
            prev = name
            out.append((c, lc))
        return out
    raise errors.UnsupportedError(f"{where}: model class {cls!r} (supported: Sequential, Functional chain)")


_RECURRENT = ("LSTM", "GRU", "SimpleRNN")


def _recurrent_kwargs(cls: str, cfg: Mapping, where: str, directions: int) -> dict:
    """Core constructor kwargs for activation choices (ONNX extension only when not the default)."""
    act = _act_name(cfg.get("activation", "tanh"), where)
    rec = _act_name(cfg.get("recurrent_activation", "sigmoid"), where) if cls != "SimpleRNN" else None
    for a in (act, rec):
        if a is not None and a not in _ACT_ONNX:
            raise errors.UnsupportedError(f"{where}: activation {a!r} (supported: {', '.join(_ACT_ONNX)})")
    if cls == "SimpleRNN":
        if act in ("tanh", "relu"):
            return {"nonlinearity": act}
        return {"activations": [[_ACT_ONNX[act]]] * directions}
    if act == "tanh" and rec == "sigmoid":
        return {}
    funcs = [_ACT_ONNX[rec], _ACT_ONNX[act]] + ([_ACT_ONNX[act]] if cls == "LSTM" else [])
    return {"activations": [funcs] * directions}


def _convert_cell(cls: str, cfg: Mapping, kernel, rec, bias, H: int) -> dict[str, np.ndarray]:
    """Keras cell variables -> the torch-named parameters of one direction (suffix added by caller)."""
    G = {"LSTM": 4, "GRU": 3, "SimpleRNN": 1}[cls]
    order = {"LSTM": [0, 1, 2, 3], "GRU": [1, 0, 2], "SimpleRNN": [0]}[cls]
    p = {"weight_ih": _gate_blocks(kernel.T, order), "weight_hh": _gate_blocks(rec.T, order)}
    if bias is not None:
        if cls == "GRU" and cfg.get("reset_after", True):
            p["bias_ih"] = _gate_blocks(bias[0], order)
            p["bias_hh"] = _gate_blocks(bias[1], order)
        else:
            p["bias_ih"] = _gate_blocks(bias.reshape(G * H), order)
            p["bias_hh"] = np.zeros(G * H, np.float32)
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in p.items()}


def _read_cell(w: _Weights, gpath: str, cls: str, cfg: Mapping, I: int | None) -> tuple[dict, int, int]:
    H = cfg.get("units")
    if isinstance(H, bool) or not isinstance(H, int) or H < 1:
        raise errors.FormatError(
            f"{w.path}: layer {cfg.get('name')!r}: units must be a positive int, got {H!r}"
        )
    G = {"LSTM": 4, "GRU": 3, "SimpleRNN": 1}[cls]
    use_bias = bool(cfg.get("use_bias", True))
    if cls == "GRU" and cfg.get("reset_after", True):
        bshape = (2, G * H)
    else:
        bshape = (G * H,)
    cell = f"{gpath}/cell"
    kshape = None if I is None else (I, G * H)
    if I is None:  # the input size comes from the kernel; read its shape first
        ds = w.h5.get(f"{cell}/vars/0")
        if ds is None or not hasattr(ds, "shape") or len(ds.shape) != 2:
            raise errors.StateDictError(f"{w.path}: missing tensor {cell}/vars/0 (kernel)")
        kshape = (int(ds.shape[0]), G * H)
    vs = w.vars(cell, 3 if use_bias else 2, [kshape, (H, G * H), bshape])
    kernel, rec = vs[0], vs[1]
    bias = vs[2] if use_bias else None
    return _convert_cell(cls, cfg, kernel, rec, bias, H), kernel.shape[0], H


def _build_recurrent(w: _Weights, gpath: str, cls: str, cfg: dict, I: int | None, occurrence: int):
    core = M._core()
    where = f"{w.path}: layer {cfg.get('name')!r}"
    for flag in ("return_state", "stateful"):
        if cfg.get(flag):
            raise errors.UnsupportedError(f"{where}: {cls} with {flag}=True")
    params, I, H = _read_cell(w, gpath, cls, cfg, I)
    kw = _recurrent_kwargs(cls, cfg, where, 1)
    ctor = {"LSTM": core.LSTM, "GRU": core.GRU, "SimpleRNN": core.RNN}[cls]
    if cls == "GRU":
        kw["reset_after"] = bool(cfg.get("reset_after", True))
    layer = ctor(I, H, bias=bool(cfg.get("use_bias", True)), batch_first=True, **kw)
    layer.load_state_dict({f"{k}_l0": v for k, v in params.items()})
    if cfg.get("go_backwards"):
        layer = M.Reversed(layer, realign=False)
    return layer, H, bool(cfg.get("return_sequences", False))


def _build_bidirectional(w: _Weights, gpath: str, cfg: dict, I: int | None):
    core = M._core()
    where = f"{w.path}: layer {cfg.get('name')!r}"
    if cfg.get("merge_mode", "concat") != "concat":
        raise errors.UnsupportedError(
            f"{where}: Bidirectional merge_mode={cfg.get('merge_mode')!r} (supported: 'concat')"
        )
    fcls, fcfg = _unwrap(cfg.get("layer"))
    bcls, bcfg = _unwrap(cfg["backward_layer"]) if cfg.get("backward_layer") else (fcls, dict(fcfg))
    if fcls not in _RECURRENT or bcls != fcls:
        raise errors.UnsupportedError(f"{where}: Bidirectional({fcls}/{bcls})")
    for key in ("units", "use_bias", "reset_after", "activation", "recurrent_activation"):
        if fcfg.get(key) != bcfg.get(key):
            raise errors.UnsupportedError(f"{where}: forward and backward layers differ in {key!r}")
    for flag in ("return_state", "stateful", "go_backwards"):
        if fcfg.get(flag):
            raise errors.UnsupportedError(f"{where}: Bidirectional({fcls}) with {flag}=True")
    pf, I, H = _read_cell(w, f"{gpath}/forward_layer", fcls, fcfg, I)
    pb, _, _ = _read_cell(w, f"{gpath}/backward_layer", bcls, bcfg, I)
    kw = _recurrent_kwargs(fcls, fcfg, where, 2)
    if fcls == "GRU":
        kw["reset_after"] = bool(fcfg.get("reset_after", True))
    ctor = {"LSTM": core.LSTM, "GRU": core.GRU, "SimpleRNN": core.RNN}[fcls]
    layer = ctor(I, H, bias=bool(fcfg.get("use_bias", True)), batch_first=True, bidirectional=True, **kw)
    sd = {f"{k}_l0": v for k, v in pf.items()}
    sd.update({f"{k}_l0_reverse": v for k, v in pb.items()})
    layer.load_state_dict(sd)
    return layer, 2 * H, bool(fcfg.get("return_sequences", False))


def _activation_layer(name: str, where: str):
    name = _act_name(name, where)
    table = {
        "softmax": M.Softmax,
        "sigmoid": M.Sigmoid,
        "tanh": M.Tanh,
        "relu": M.ReLU,
        "log_softmax": M.LogSoftmax,
    }
    if name == "linear":
        return None
    if name not in table:
        raise errors.UnsupportedError(f"{where}: activation {name!r} (supported: linear, {', '.join(table)})")
    return table[name]()


def from_keras(model_cfg: Mapping, h5: Any, path: str, file_size: int) -> M.Sequential:
    """Build an rnnfast Sequential from a Keras model config and an open h5py weights file."""
    if "layers" not in h5:
        if "model_weights" in h5 or "keras_version" in getattr(h5, "attrs", {}):
            raise errors.UnsupportedError(
                f"{path}: legacy Keras 2 HDF5 model file; re-save it with Keras 3 (model.save('m.keras'))"
            )
        raise errors.FormatError(f"{path}: not a Keras 3 weights file (no 'layers' group)")
    w = _Weights(h5, path, file_size)
    layers: OrderedDict[str, Any] = OrderedDict()
    seen: dict[str, int] = {}
    width: int | None = None  # feature size flowing between layers, once known
    return_seq: list[tuple[str, bool]] = []
    masking = False
    masked_output = "zero"  # what the last recurrent layer outputs at masked steps (Keras)
    unsupported = []
    chain = _chain(model_cfg, path)
    for cls, cfg in chain:
        if cls not in (
            "InputLayer",
            "Embedding",
            "Dense",
            "Activation",
            "Softmax",
            "Dropout",
            "SpatialDropout1D",
            "TimeDistributed",
            "Bidirectional",
            *_RECURRENT,
        ):
            unsupported.append(f"{cls} ({cfg.get('name')})")
    if unsupported:
        raise errors.UnsupportedError(f"{path}: unsupported Keras layers: {', '.join(unsupported)}")
    for cls, cfg in chain:
        name = str(cfg.get("name", f"{cls.lower()}_{len(layers)}"))
        occurrence = seen.get(cls, 0)
        seen[cls] = occurrence + 1
        where = f"{path}: layer {name!r}"
        if cls in ("InputLayer", "Dropout", "SpatialDropout1D"):
            continue
        gpath = w.group(name, cls, occurrence) if cls not in ("Activation", "Softmax") else None
        if cls == "TimeDistributed":
            cls, cfg = _unwrap(cfg.get("layer"))
            if cls != "Dense":
                raise errors.UnsupportedError(f"{where}: TimeDistributed({cls})")
            gpath = f"{gpath}/layer"
        if cls == "Embedding":
            mask_zero = bool(cfg.get("mask_zero"))
            if mask_zero and layers:
                raise errors.UnsupportedError(
                    f"{where}: Embedding(mask_zero=True) that is not the first layer"
                )
            masking = masking or mask_zero
            V, E = cfg.get("input_dim"), cfg.get("output_dim")
            if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (V, E)):
                raise errors.FormatError(f"{where}: bad input_dim/output_dim {V!r}/{E!r}")
            (emb,) = w.vars(gpath, 1, [(V, E)])
            layer = M.Embedding(V, E, mask_zero=mask_zero)
            layer.load_state_dict({"weight": emb})
            layers[name] = layer
            width = E
        elif cls == "Dense":
            O = cfg.get("units")
            if isinstance(O, bool) or not isinstance(O, int) or O < 1:
                raise errors.FormatError(f"{where}: units must be a positive int, got {O!r}")
            use_bias = bool(cfg.get("use_bias", True))
            if width is None:
                ds = w.h5.get(f"{gpath}/vars/0")
                if ds is None or len(getattr(ds, "shape", ())) != 2:
                    raise errors.StateDictError(f"{path}: missing tensor {gpath}/vars/0 (kernel)")
                width = int(ds.shape[0])
            vs = w.vars(gpath, 2 if use_bias else 1, [(width, O), (O,)])
            layer = M.Linear(width, O, bias=use_bias)
            sd = {"weight": np.ascontiguousarray(vs[0].T)}
            if use_bias:
                sd["bias"] = vs[1]
            layer.load_state_dict(sd)
            layers[name] = layer
            act = _activation_layer(cfg.get("activation", "linear"), where)
            if act is not None:
                layers[f"{name}_activation"] = act
            width = O
        elif cls == "Activation":
            act = _activation_layer(cfg.get("activation"), where)
            if act is not None:
                layers[name] = act
        elif cls == "Softmax":
            axis = cfg.get("axis", -1)
            if isinstance(axis, list):
                if len(axis) != 1:
                    raise errors.UnsupportedError(f"{where}: Softmax over several axes {axis}")
                axis = axis[0]
            layers[name] = M.Softmax(axis)
        elif cls == "Bidirectional":
            layer, width, rs = _build_bidirectional(w, gpath, cfg, width)
            layers[name] = layer
            return_seq.append((name, rs))
            masked_output = "zero"  # Bidirectional forces zero_output_for_mask when returning sequences
        else:  # LSTM / GRU / SimpleRNN
            layer, width, rs = _build_recurrent(w, gpath, cls, cfg, width, occurrence)
            if masking and rs and cfg.get("go_backwards"):
                raise errors.UnsupportedError(
                    f"{where}: go_backwards=True with return_sequences=True under masking (mask_zero)"
                )
            layers[name] = layer
            return_seq.append((name, rs))
            masked_output = "zero" if cfg.get("zero_output_for_mask") else "carry"
    for name, rs in return_seq[:-1]:
        if not rs:
            raise errors.UnsupportedError(
                f"{path}: recurrent layer {name!r} has return_sequences=False but is followed by another "
                "recurrent layer (RepeatVector-style models are not supported)"
            )
    many_to_one = bool(return_seq) and not return_seq[-1][1]
    if not layers:
        raise errors.FormatError(f"{path}: the Keras model has no layers with weights")
    return M.Sequential(layers, many_to_one=many_to_one, masked_output=masked_output if masking else "zero")


# --------------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------------
def _zip_member(z: zipfile.ZipFile, name: str, path: str, limit: int | None) -> bytes:
    try:
        info = z.getinfo(name)
    except KeyError as exc:
        raise errors.FormatError(f"{path}: the archive has no {name!r} (not a Keras 3 .keras file)") from exc
    if limit is not None and info.file_size > limit:
        raise errors.FormatError(f"{path}: {name} declares {info.file_size} bytes (limit {limit})")
    if info.file_size > max(info.compress_size, 1) * MAX_ZIP_RATIO + (1 << 20):
        raise errors.FormatError(
            f"{path}: {name} declares {info.file_size} bytes uncompressed from "
            f"{info.compress_size} stored bytes (zip bomb?)"
        )
    try:
        with z.open(info) as f:
            data = f.read(info.file_size + 1)
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError) as exc:
        raise errors.FormatError(f"{path}: cannot read {name} from the archive: {exc}") from exc
    except Exception as exc:
        raise errors.FormatError(f"{path}: corrupt archive member {name}: {exc}") from exc
    if len(data) != info.file_size:
        raise errors.FormatError(
            f"{path}: {name} is {len(data)} bytes, the archive declares {info.file_size}"
        )
    return data


def _check_global_heaps(buf: Any, path: str) -> None:
    """Refuse an HDF5 file whose global heap collections do not add up.

    Variable-length strings (the ``name`` attribute Keras writes on every ``vars`` group) live in global
    heap collections ("GCOL", HDF5 spec III.E): a 16-byte header with the collection size, then objects
    (16-byte header + data padded to 8 bytes) up to a free-space object (index 0) whose size is the rest
    of the collection. With a corrupt free-space size libhdf5 spins forever when it dereferences such a
    string (found by fuzzing), and nothing can interrupt it: the chain is checked here, on the raw bytes,
    before h5py touches the file. ``buf`` supports ``find`` and slicing (bytes, memoryview, mmap).
    """
    n = len(buf)
    at = buf.find(b"GCOL")
    while at != -1:
        head = bytes(buf[at : at + 16])
        # version 1, 3 reserved zero bytes, size >= 4096 (HDF5's minimum): anything else is not a collection
        if len(head) == 16 and head[4] == 1 and head[5:8] == b"\0\0\0":
            size = int.from_bytes(head[8:16], "little")
            if size >= 4096:
                if at + size > n:
                    raise errors.FormatError(f"{path}: corrupt HDF5 global heap at byte {at}: extends past the file")
                pos = 16
                while True:
                    if size - pos < 16:
                        break  # objects fill the collection (too little left for a free-space object)
                    obj = bytes(buf[at + pos : at + pos + 16])
                    index, osize = int.from_bytes(obj[0:2], "little"), int.from_bytes(obj[8:16], "little")
                    if index == 0:  # free space: the rest of the collection
                        if osize != size - pos:
                            raise errors.FormatError(
                                f"{path}: corrupt HDF5 global heap at byte {at}: free space of {osize} bytes, "
                                f"expected {size - pos}"
                            )
                        break
                    step = 16 + (osize + 7) // 8 * 8
                    if step > size - pos:
                        raise errors.FormatError(
                            f"{path}: corrupt HDF5 global heap at byte {at}: object {index} of {osize} bytes "
                            "overruns the collection"
                        )
                    pos += step
        at = buf.find(b"GCOL", at + 4)


def _open_h5(source: Any, path: str):
    h5py = _h5py()
    try:
        if isinstance(source, io.BytesIO):
            _check_global_heaps(source.getbuffer().tobytes(), path)
        else:
            import mmap

            with open(source, "rb") as f:
                if os.fstat(f.fileno()).st_size:
                    with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                        _check_global_heaps(mm, path)
    except OSError as exc:
        raise errors.FormatError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        return h5py.File(source, "r")
    except Exception as exc:
        raise errors.FormatError(f"{path}: not a readable HDF5 weights file: {exc}") from exc


def read_keras_archive(path: str) -> tuple[dict, bytes]:
    """config.json (parsed) and the bytes of model.weights.h5 from a .keras archive."""
    try:
        z = zipfile.ZipFile(path)
    except FileNotFoundError as exc:
        raise errors.FormatError(f"{path}: no such file") from exc
    except (zipfile.BadZipFile, OSError) as exc:
        raise errors.FormatError(f"{path}: not a .keras archive (bad zip: {exc})") from exc
    with z:
        raw = _zip_member(z, "config.json", path, MAX_CONFIG_BYTES)
        weights = _zip_member(z, "model.weights.h5", path, None)
    try:
        cfg = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise errors.FormatError(f"{path}: config.json is not valid JSON: {exc}") from exc
    if not isinstance(cfg, dict):
        raise errors.FormatError(f"{path}: config.json is not a JSON object")
    return cfg, weights


def load_keras(path: str | os.PathLike) -> M.Sequential:
    """Load a Keras 3 ``.keras`` archive into an rnnfast Sequential (h5py needed, Keras not)."""
    path = os.fspath(path)
    cfg, weights = read_keras_archive(path)
    h5 = _open_h5(io.BytesIO(weights), path)
    with h5:
        return _guard(lambda: from_keras(cfg, h5, path, len(weights)), path)


def _guard(fn: Callable[[], Any], path: str) -> Any:
    try:
        return fn()
    except errors.RnnfastError:
        raise
    except RecursionError as exc:
        raise errors.FormatError(f"{path}: config nested too deeply") from exc
    except (KeyError, TypeError, ValueError, AttributeError, OSError) as exc:
        raise errors.FormatError(f"{path}: malformed Keras model: {type(exc).__name__}: {exc}") from exc
    except RuntimeError as exc:  # h5py's error for a corrupt HDF5 structure met while walking the file
        raise errors.FormatError(f"{path}: corrupt HDF5 weights: {exc}") from exc


def load_keras_weights(path: str | os.PathLike, architecture: Any = None) -> M.Sequential:
    """Load a Keras 3 ``.weights.h5`` file with the architecture given by the user.

    architecture: the Keras config (``model.get_config()`` or the content of ``config.json``), or a
    path to a ``config.json`` or a ``.keras`` file.
    """
    path = os.fspath(path)
    if architecture is None:
        raise errors.FormatError(
            f"{path}: a Keras .weights.h5 file has no architecture; pass architecture= (the Keras model config "
            "dict, or a config.json / .keras path)"
        )
    if isinstance(architecture, (str, os.PathLike)):
        apath = os.fspath(architecture)
        if apath.lower().endswith(".keras"):
            cfg, _ = read_keras_archive(apath)
        else:
            try:
                with open(apath, encoding="utf-8") as f:
                    cfg = json.load(f)
            except OSError as exc:
                raise errors.FormatError(f"{apath}: cannot read: {exc.strerror or exc}") from exc
            except (ValueError, RecursionError) as exc:
                raise errors.FormatError(f"{apath}: not valid JSON: {exc}") from exc
    elif isinstance(architecture, Mapping):
        cfg = dict(architecture)
    elif hasattr(architecture, "get_config"):  # a keras.Model
        cfg = {
            "class_name": type(architecture).__name__
            if type(architecture).__name__ == "Sequential"
            else "Functional",
            "config": architecture.get_config(),
        }
    else:
        raise errors.FormatError(
            f"{path}: architecture must be a Keras config dict or path, got {type(architecture).__name__}"
        )
    if not os.path.isfile(path):
        raise errors.FormatError(f"{path}: no such file")
    h5 = _open_h5(path, path)
    with h5:
        return _guard(lambda: from_keras(cfg, h5, path, os.path.getsize(path)), path)
