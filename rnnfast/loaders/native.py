"""The native format: a safetensors file written and read by rnnfast's own code.

Layout (https://huggingface.co/docs/safetensors, the de-facto standard, readable by every framework)::

    8 bytes   little-endian uint64 N: length of the JSON header
    N bytes   JSON: {"<tensor name>": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
                     "__metadata__": {"format": "rnnfast", "rnnfast_format_version": "1",
                                      "architecture": "<JSON of model.config()>"}}
    rest      the tensors' bytes, little-endian, C order, offsets relative to the end of the header

Nothing in a file is executed; every declared size is checked against the real file size before any
tensor is allocated, and the architecture's parameter count is checked against the bytes the file holds
before the model is built. ``safetensors`` (the package) is not needed.
"""

from __future__ import annotations

import json
import math
import os
import struct
import tempfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from .. import errors

FORMAT_NAME = "rnnfast"
FORMAT_VERSION = "1"
MAX_HEADER = 100 * 1024 * 1024  # the safetensors reference implementation's limit
MAX_NDIM = 16

# safetensors dtype name -> numpy dtype (little-endian)
_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_NAMES = {np.dtype(v).newbyteorder("="): k for k, v in _DTYPES.items() if k != "BF16"}


def _dtype_name(dt: np.dtype) -> str:
    key = np.dtype(dt).newbyteorder("=")
    if key not in _NAMES:
        raise errors.DTypeError(f"cannot store dtype {dt} in safetensors")
    return _NAMES[key]


# --------------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------------
def write_safetensors(
    path: str | os.PathLike, tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None
) -> None:
    """Write ``tensors`` (name -> array) and string ``metadata`` as a safetensors file, atomically."""
    path = os.fspath(path)
    arrays: list[tuple[str, np.ndarray]] = []
    for name in sorted(tensors):
        if not isinstance(name, str) or not name or name == "__metadata__":
            raise errors.StateDictError(f"{path}: invalid tensor name {name!r}")
        a = tensors[name]
        if hasattr(a, "detach"):
            a = a.detach().cpu().numpy()
        a = np.asarray(a)
        a = np.asarray(a, dtype=a.dtype.newbyteorder("<") if a.dtype.itemsize > 1 else a.dtype)
        if not a.flags.c_contiguous:  # (np.ascontiguousarray would turn a 0-d array into 1-d)
            a = a.copy(order="C")
        arrays.append((name, a))
    header: dict[str, Any] = {}
    if metadata:
        for k, v in metadata.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise errors.FormatError(
                    f"{path}: metadata must map str to str, got {k!r}: {type(v).__name__}"
                )
        header["__metadata__"] = dict(metadata)
    offset = 0
    for name, a in arrays:
        header[name] = {
            "dtype": _dtype_name(a.dtype),
            "shape": list(a.shape),
            "data_offsets": [offset, offset + a.nbytes],
        }
        offset += a.nbytes
    hbytes = json.dumps(header, separators=(",", ":"), allow_nan=False).encode("utf-8")
    hbytes += b" " * (-len(hbytes) % 8)  # align the data on 8 bytes, like the reference writer
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".rnnfast-", suffix=".tmp", dir=directory)
    try:
        # mkstemp creates the file 0600; a saved model gets the permissions of an ordinary new file
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            f.write(struct.pack("<Q", len(hbytes)))
            f.write(hbytes)
            for _, a in arrays:
                f.write(a.tobytes(order="C"))
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def save(model: Any, path: str | os.PathLike) -> None:
    """Save any rnnfast layer or model (its ``config()`` and ``state_dict()``) to ``path``.

    The file is a standard safetensors file; ``rnnfast.load(path)`` rebuilds the model bit-exactly.
    """
    if not hasattr(model, "config") or not hasattr(model, "state_dict"):
        raise errors.UnsupportedError(f"save: expected an rnnfast layer or model, got {type(model).__name__}")
    cfg = model.config()
    meta = {
        "format": FORMAT_NAME,
        "rnnfast_format_version": FORMAT_VERSION,
        "architecture": json.dumps(cfg, separators=(",", ":")),
    }
    write_safetensors(path, model.state_dict(), meta)


def dumps(model: Any) -> bytes:
    """The native file of ``model`` (what :func:`save` writes) as bytes."""
    if not callable(getattr(model, "config", None)) or not callable(getattr(model, "state_dict", None)):
        raise errors.UnsupportedError(
            f"model: expected an rnnfast model with config() and state_dict() (it is written in the native "
            f"safetensors format), got {type(model).__name__}"
        )
    with tempfile.TemporaryDirectory(prefix="rnnfast-") as d:
        path = os.path.join(d, "model.safetensors")
        save(model, path)
        with open(path, "rb") as f:
            return f.read()


def loads(data: bytes) -> Any:
    """Inverse of :func:`dumps`, with every check of :func:`load` (nothing in the bytes is executed)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise errors.DTypeError(f"data: expected bytes, got {type(data).__name__}")
    with tempfile.TemporaryDirectory(prefix="rnnfast-") as d:
        path = os.path.join(d, "model.safetensors")
        with open(path, "wb") as f:
            f.write(data)
        return load(path)


def reduce_model(model: Any) -> tuple:
    """``__reduce__`` of rnnfast layers and models: they pickle as their native bytes, never as objects."""
    return (loads, (dumps(model),))


# --------------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------------
class SafetensorsFile:
    """A validated safetensors header. Tensors are read on demand with :meth:`read`.

    Validation (before anything is allocated): header length within the file and <= 100 MiB, valid
    UTF-8 JSON object without duplicate keys, known dtypes, non-negative integer shapes whose byte size
    equals the declared offsets, offsets inside the data section, tensors neither overlapping nor
    leaving holes.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        try:
            self.file_size = os.path.getsize(self.path)
            with open(self.path, "rb") as f:
                head = f.read(8)
                if len(head) < 8:
                    raise self._err(f"file is {len(head)} bytes, too short for a safetensors header (8)")
                (n,) = struct.unpack("<Q", head)
                if n > self.file_size - 8:
                    raise self._err(
                        f"header length {n} exceeds the file size ({self.file_size} bytes): "
                        "truncated or not a safetensors file"
                    )
                if n > MAX_HEADER:
                    raise self._err(f"header length {n} is larger than the {MAX_HEADER} byte limit")
                raw = f.read(n)
        except OSError as exc:
            raise errors.FormatError(f"{self.path}: cannot read: {exc.strerror or exc}") from exc
        if len(raw) != n:
            raise self._err(f"header truncated: expected {n} bytes, got {len(raw)}")
        if not raw.lstrip(b" ").startswith(b"{"):
            raise self._err("wrong magic: the header is not a JSON object (not a safetensors file)")
        self.header_len = n
        self.data_start = 8 + n
        self.data_len = self.file_size - self.data_start

        def no_dupes(pairs):
            d = {}
            for k, v in pairs:
                if k in d:
                    raise self._err(f"duplicate key {k!r} in header")
                d[k] = v
            return d

        try:
            header = json.loads(raw.decode("utf-8"), object_pairs_hook=no_dupes)
        except errors.FormatError:
            raise
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise self._err(f"header is not valid JSON: {exc}") from exc
        if not isinstance(header, dict):
            raise self._err("header is not a JSON object")
        meta = header.pop("__metadata__", None) or {}
        if not isinstance(meta, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in meta.items()
        ):
            raise self._err("__metadata__ must map strings to strings")
        self.metadata: dict[str, str] = meta
        self.entries: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
        spans = []
        for name, e in header.items():
            if not isinstance(e, dict) or set(e) != {"dtype", "shape", "data_offsets"}:
                raise self._err(f"tensor {name!r}: entry must have exactly dtype, shape, data_offsets")
            dt, shape, offs = e["dtype"], e["shape"], e["data_offsets"]
            if not isinstance(dt, str) or dt not in _DTYPES:  # (a list would leak a TypeError)
                raise self._err(f"tensor {name!r}: unknown dtype {dt!r} (known: {', '.join(_DTYPES)})")
            if (
                not isinstance(shape, list)
                or len(shape) > MAX_NDIM
                or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
            ):
                raise self._err(
                    f"tensor {name!r}: shape must be a list of <= {MAX_NDIM} ints >= 0, got {shape!r}"
                )
            if (
                not isinstance(offs, list)
                or len(offs) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offs)
            ):
                raise self._err(f"tensor {name!r}: data_offsets must be [begin, end], got {offs!r}")
            begin, end = offs
            nbytes = math.prod(shape) * _DTYPES[dt].itemsize  # Python ints: no overflow
            if not 0 <= begin <= end <= self.data_len:
                raise self._err(
                    f"tensor {name!r}: data_offsets [{begin}, {end}] outside the data section "
                    f"of {self.data_len} bytes (truncated file or lying header)"
                )
            if end - begin != nbytes:
                raise self._err(
                    f"tensor {name!r}: shape {shape} of {dt} needs {nbytes} bytes, "
                    f"data_offsets give {end - begin}"
                )
            self.entries[name] = (dt, tuple(shape), begin, end)
            spans.append((begin, end, name))
        spans.sort()
        pos = 0
        for begin, end, name in spans:
            if begin < pos:
                raise self._err(f"tensor {name!r} overlaps the previous tensor")
            if begin > pos:
                raise self._err(f"hole of {begin - pos} bytes before tensor {name!r}")
            pos = end
        if pos != self.data_len:
            raise self._err(f"{self.data_len - pos} trailing bytes after the last tensor")

    def _err(self, msg: str) -> errors.FormatError:
        return errors.FormatError(f"{self.path}: {msg}")

    def keys(self) -> list[str]:
        return list(self.entries)

    def nbytes(self) -> int:
        return self.data_len

    def read(self, name: str) -> np.ndarray:
        """One tensor as a native-endian array (BF16 is widened to float32 exactly)."""
        dt, shape, begin, end = self.entries[name]
        buf = bytearray(end - begin)
        try:
            with open(self.path, "rb") as f:
                f.seek(self.data_start + begin)
                got = f.readinto(buf)
        except OSError as exc:
            raise self._err(f"cannot read tensor {name!r}: {exc}") from exc
        if got != len(buf):
            raise self._err(f"tensor {name!r} truncated: expected {len(buf)} bytes, got {got}")
        arr = np.frombuffer(buf, dtype=_DTYPES[dt]).reshape(shape)
        if dt == "BF16":
            return (arr.astype(np.uint32) << 16).view(np.float32)
        return arr.astype(_DTYPES[dt].newbyteorder("="), copy=False)

    def read_all(self) -> dict[str, np.ndarray]:
        return {k: self.read(k) for k in self.entries}


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read every tensor and the metadata of a safetensors file (validated as :class:`SafetensorsFile`)."""
    st = SafetensorsFile(path)
    return st.read_all(), dict(st.metadata)


def is_safetensors(path: str | os.PathLike) -> bool:
    """Cheap sniff: a plausible 8-byte header length followed by '{'."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
        size = os.path.getsize(path)
    except OSError:
        return False
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return n <= size - 8 and head[8:9] in (b"{", b" ")


# --------------------------------------------------------------------------------------------------
# model loading with checks
# --------------------------------------------------------------------------------------------------
def resolve_architecture(architecture: Any, path: str) -> dict:
    """architecture: an rnnfast model (its config() is used), a config dict, or a JSON file path."""
    if architecture is None:
        raise errors.FormatError(f"{path}: no architecture given")
    if hasattr(architecture, "config") and callable(architecture.config):
        return architecture.config()
    if isinstance(architecture, Mapping):
        return dict(architecture)
    if isinstance(architecture, (str, os.PathLike)):
        apath = os.fspath(architecture)
        try:
            with open(apath, encoding="utf-8") as f:
                return json.load(f)
        except OSError as exc:
            raise errors.FormatError(
                f"{apath}: cannot read architecture file: {exc.strerror or exc}"
            ) from exc
        except (ValueError, RecursionError) as exc:
            raise errors.FormatError(f"{apath}: architecture file is not valid JSON: {exc}") from exc
    raise errors.FormatError(
        f"architecture must be a model, a config dict or a JSON path, got {type(architecture).__name__}"
    )


def build_checked(cfg: Any, available_bytes: int, path: str) -> Any:
    """Build a model from ``cfg`` after checking its parameter count against the bytes a file holds."""
    from ..models import model_from_config, param_count_bound

    try:
        n = param_count_bound(cfg)
    except RecursionError as exc:
        raise errors.FormatError(f"{path}: architecture is nested too deeply") from exc
    except errors.RnnfastError as exc:
        raise type(exc)(f"{path}: {exc}") from exc
    # the file stores each parameter in >= 2 bytes (F16); F32 is the norm
    if 2 * n > available_bytes:
        raise errors.FormatError(
            f"{path}: architecture declares {n} parameters ({4 * n} bytes as float32) but the file holds "
            f"only {available_bytes} bytes of tensors (truncated file or lying architecture)"
        )
    try:
        return model_from_config(cfg)
    except RecursionError as exc:
        raise errors.FormatError(f"{path}: architecture is nested too deeply") from exc
    except errors.RnnfastError as exc:
        raise type(exc)(f"{path}: {exc}") from exc


def check_and_load(
    model: Any, tensors: Mapping[str, np.ndarray], path: str, shapes_only: bool = False
) -> Any:
    """Load ``tensors`` into ``model`` after checking names, shapes and dtype kinds, naming the file."""
    from ..models import is_optional_param

    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(k for k in set(tensors) - set(expected) if not is_optional_param(k))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing tensors {missing}")
        if unexpected:
            parts.append(f"unexpected tensors {unexpected}")
        raise errors.StateDictError(f"{path}: " + "; ".join(parts))
    for k, got in tensors.items():
        if k not in expected:  # an optional parameter (peepholes): float vector
            if got.dtype.kind != "f":
                raise errors.DTypeError(f"{path}: tensor {k!r} expected a float dtype, got {got.dtype}")
            continue
        ref = np.asarray(expected[k])
        if tuple(got.shape) != tuple(ref.shape):
            raise errors.StateDictError(
                f"{path}: tensor {k!r} expected shape {tuple(ref.shape)}, got {tuple(got.shape)}"
            )
        if ref.dtype.kind == "f" and got.dtype.kind != "f":
            raise errors.DTypeError(f"{path}: tensor {k!r} expected a float dtype, got {got.dtype}")
        if ref.dtype.kind in "iub" and got.dtype.kind != ref.dtype.kind:
            raise errors.DTypeError(f"{path}: tensor {k!r} expected dtype {ref.dtype}, got {got.dtype}")
    try:
        model.load_state_dict(dict(tensors), strict=True)
    except errors.RnnfastError as exc:
        raise type(exc)(f"{path}: {exc}") from exc
    return model


def load(path: str | os.PathLike, architecture: Any = None) -> Any:
    """Load a native rnnfast file, or any safetensors state_dict plus ``architecture``.

    Parameters
    ----------
    path : a .safetensors file
    architecture : None (use the architecture stored in the file), an rnnfast model or layer (only its
        config() is used; the object is not modified), a config dict, or a path to a JSON config.
    """
    path = os.fspath(path)
    st = SafetensorsFile(path)
    if architecture is None:
        arch = st.metadata.get("architecture")
        if arch is None:
            raise errors.FormatError(
                f"{path}: safetensors file without an rnnfast architecture in its metadata; pass "
                "architecture= (an rnnfast model or config) to load a plain state_dict"
            )
        try:
            cfg = json.loads(arch)
        except (ValueError, RecursionError) as exc:
            raise errors.FormatError(f"{path}: architecture metadata is not valid JSON: {exc}") from exc
        version = st.metadata.get("rnnfast_format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise errors.UnsupportedError(
                f"{path}: rnnfast format version {version!r}, this rnnfast reads {FORMAT_VERSION!r}"
            )
    else:
        cfg = resolve_architecture(architecture, path)
    model = build_checked(cfg, st.nbytes(), path)
    from ..models import is_optional_param

    expected = model.state_dict()
    # names and shapes are checked against the header before a single tensor is read
    if set(expected) == {k for k in st.entries if k in expected or not is_optional_param(k)}:
        for k, ref in expected.items():
            if tuple(np.asarray(ref).shape) != st.entries[k][1]:
                raise errors.StateDictError(
                    f"{path}: tensor {k!r} expected shape {tuple(np.asarray(ref).shape)}, "
                    f"got {st.entries[k][1]}"
                )
        tensors = st.read_all()
    else:
        from .torch_models import remap_state_dict

        tensors = remap_state_dict({k: _Lazy(st, k) for k in st.entries}, expected, path)
        tensors = {k: (v.load() if isinstance(v, _Lazy) else v) for k, v in tensors.items()}
    return check_and_load(model, tensors, path)


class _Lazy:
    """A tensor of a safetensors file not read yet (for key remapping)."""

    def __init__(self, st: SafetensorsFile, name: str) -> None:
        self.st, self.name = st, name
        self.shape = st.entries[name][1]

    def load(self) -> np.ndarray:
        return self.st.read(self.name)
