"""Batch inference on a Dask cluster: ship a model to the workers, score many sequences, keep their order.

    import dask.array as da, rnnfast, rnnfast.dask
    from distributed import Client

    client = Client("tcp://scheduler:8786")                  # or Client(LocalCluster(host="127.0.0.1"))
    x = da.from_zarr(...)                                     # (N, T) tokens or (N, T, I) features, padded
    lengths = da.from_zarr(...)                               # (N,) valid steps per sequence
    probs = rnnfast.dask.predict(model, x, lengths, output="last", batch_size=256).compute()   # (N, O)

    bag = dask.bag.from_sequence(list_of_sequences, npartitions=64)     # each (T_i,) or (T_i, I)
    outs = rnnfast.dask.predict(model, bag, output="sequence").compute()  # list of (T_i, O), input order

How it works
------------
* The model travels as a :class:`ModelHandle`: it pickles as ``(native safetensors bytes, sha256)``,
  the format of ``rnnfast.save`` (an architecture as JSON and the tensors; nothing in it is executed).
  The handle is one key of the task graph, so each worker receives it once. A worker process loads the
  model from the bytes once, the first time a task needs it, and caches it by its hash
  (:func:`cache_info` reports the loads). rnnfast's layers themselves do not pickle.
* Each partition (an array block, a bag partition or a dataframe partition) is scored in batches of
  ``batch_size`` sequences of similar length: the partition's sequences are sorted by length, cut into
  batches, each batch is padded only to its own longest sequence, and the outputs are put back in the
  input order. Dask keeps the order of the partitions, so the result is in the input order.
* Threads: on a worker, rnnfast uses ``threads_per_worker`` threads, by default
  ``max(1, cores // dask threads on that host)``, so rnnfast threads x dask threads <= cores.

Outputs
-------
``output="last"``: one vector per sequence. For an LSTM/GRU/RNN layer: the top layer's final hidden state,
directions concatenated [forward, backward] (B, D*Hout). For a ``Sequential`` with ``many_to_one``: what
the model returns. For a per-step ``Sequential``: its output at each sequence's last valid step (zeros for
a length-0 sequence).
``output="sequence"``: per-step outputs, batch-first (T, D*Hout or O) per sequence; positions past a
sequence's length are 0.
``output="tokens"``: decoded token ids, for a model with a ``greedy_decode``, ``decode`` or ``greedy``
method taking ``(src, src_lengths, **decode_kwargs)`` (a Seq2Seq); the model must also save to the
native format (``config()`` and ``state_dict()``) to be shipped.

Results do not depend on the partitioning up to float32 rounding: the same sequence scored in batches of
other sizes or companions may differ in the last bits (BLAS blocks differently); for a given partitioning
the cluster's result is bit-identical to the same call on the local synchronous scheduler.

Shape glossary: N=sequences T=time (padded) I=input features O=outputs B=batch.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from . import errors

__all__ = [
    "ModelHandle",
    "cache_info",
    "clear_cache",
    "model_from_bytes",
    "model_to_bytes",
    "predict",
    "predict_padded",
    "predict_sequences",
]

OUTPUTS = ("last", "sequence", "tokens")
DECODE_METHODS = ("greedy_decode", "decode", "greedy")
CACHE_SIZE = 8  # distinct models a worker process keeps loaded


def _require_dask() -> None:
    try:
        import dask  # noqa: F401
    except ImportError as exc:
        raise errors.UnsupportedError(
            "rnnfast.dask needs dask: pip install 'rnnfast[dask]' (or 'dask[distributed]')"
        ) from exc


# --------------------------------------------------------------------------------------------------
# the model as bytes (the native safetensors format, through rnnfast's own writer and reader)
# --------------------------------------------------------------------------------------------------
def model_to_bytes(model: Any) -> bytes:
    """The native file of ``model`` (what ``rnnfast.save`` writes) as bytes."""
    from .loaders import native

    return native.dumps(model)


def model_from_bytes(data: bytes) -> Any:
    """Inverse of :func:`model_to_bytes`, with every check of ``rnnfast.load`` (hostile bytes raise
    FormatError/StateDictError; nothing is executed)."""
    from .loaders import native

    return native.loads(data)


class ModelHandle:
    """An rnnfast model that pickles cheaply and safely: as its native safetensors bytes and their sha256.

    ``handle.get()`` returns the model, loaded from the bytes once per process and cached by the hash
    (thread-safe). Unpickling does not load anything; the hash is checked when the bytes are loaded.
    """

    __slots__ = ("_data", "_digest")

    def __init__(self, model: Any) -> None:
        if isinstance(model, ModelHandle):
            data, digest = model._data, model._digest
        elif isinstance(model, (bytes, bytearray, memoryview)):
            data = bytes(model)
            digest = hashlib.sha256(data).hexdigest()
        else:
            data = model_to_bytes(model)
            digest = hashlib.sha256(data).hexdigest()
        self._data: bytes = data
        self._digest: str = digest

    @property
    def digest(self) -> str:
        """sha256 of the native bytes (hex): the cache key."""
        return self._digest

    @property
    def nbytes(self) -> int:
        return len(self._data)

    def get(self) -> Any:
        """The model, loaded once per process."""
        return _cached_model(self._data, self._digest)

    def __reduce__(self):
        return (_rebuild_handle, (self._data, self._digest))

    def __dask_tokenize__(self):
        return ("rnnfast.dask.ModelHandle", self._digest)

    def __repr__(self) -> str:
        return f"ModelHandle(sha256={self._digest[:12]}..., {len(self._data)} bytes)"


def _rebuild_handle(data: Any, digest: Any) -> ModelHandle:
    """Unpickling: accepts exactly (bytes, 64-hex-digit str); the model is not built here."""
    if not isinstance(data, bytes):
        raise errors.FormatError(f"ModelHandle: expected bytes, got {type(data).__name__}")
    if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise errors.FormatError(f"ModelHandle: expected a sha256 hex digest, got {str(digest)[:80]!r}")
    h = ModelHandle.__new__(ModelHandle)
    h._data, h._digest = data, digest
    return h


# per-process cache: digest -> model, and how many times each digest was loaded in this process
_CACHE: OrderedDict[str, Any] = OrderedDict()
_LOADS: dict[str, int] = {}
_TASKS: dict[str, int] = {}  # partitions scored in this process, per model
_LOCK = threading.Lock()


def _cached_model(data: bytes, digest: str) -> Any:
    with _LOCK:
        model = _CACHE.get(digest)
        if model is not None:
            _CACHE.move_to_end(digest)
            return model
        # loading under the lock: two threads of one worker never load the same model twice
        got = hashlib.sha256(data).hexdigest()
        if got != digest:
            raise errors.FormatError(
                f"ModelHandle: bytes have sha256 {got[:12]}..., expected {digest[:12]}..."
            )
        model = model_from_bytes(data)
        _CACHE[digest] = model
        _LOADS[digest] = _LOADS.get(digest, 0) + 1
        while len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)
        return model


def _model_for_task(handle: ModelHandle) -> Any:
    model = handle.get()
    with _LOCK:
        _TASKS[handle.digest] = _TASKS.get(handle.digest, 0) + 1
    return model


def cache_info() -> dict:
    """This process' model cache: ``{"pid", "loads": {sha256: times loaded}, "tasks": {sha256: partitions
    scored}, "cached": [sha256...], "num_threads": rnnfast threads (0 = default)}``.
    On a cluster: ``client.run(rnnfast.dask.cache_info)``."""
    from . import _threads

    with _LOCK:
        return {
            "pid": os.getpid(),
            "loads": dict(_LOADS),
            "tasks": dict(_TASKS),
            "cached": list(_CACHE),
            "num_threads": _threads.get(),
        }


def clear_cache() -> None:
    """Forget the cached models and the load counts of this process."""
    with _LOCK:
        _CACHE.clear()
        _LOADS.clear()
        _TASKS.clear()


# --------------------------------------------------------------------------------------------------
# threads
# --------------------------------------------------------------------------------------------------
def _usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _current_worker() -> Any:
    if "distributed" not in sys.modules:
        return None
    try:
        from distributed import get_worker

        return get_worker()
    except (ImportError, ValueError):
        return None


def _worker_threads(worker: Any, host_threads: Mapping[str, int] | None) -> int:
    """Dask threads sharing this worker's cores: all the workers' threads on its host when known."""
    if host_threads:
        from distributed.comm import get_address_host

        try:
            host = get_address_host(worker.address)
        except ValueError:  # an unusual address: fall back to this worker's threads
            host = None
        if host in host_threads:
            return max(1, int(host_threads[host]))
    state = getattr(worker, "state", None)
    return max(1, int(getattr(state, "nthreads", None) or getattr(worker, "nthreads", 1) or 1))


def _apply_threads(threads: int | None, host_threads: Mapping[str, int] | None) -> None:
    """On a distributed worker: rnnfast threads = ``threads`` or cores // dask threads on the host.
    Elsewhere (local schedulers): only an explicit ``threads`` is applied."""
    from . import _threads

    worker = _current_worker()
    if threads is None:
        if worker is None:
            return
        threads = max(1, _usable_cores() // _worker_threads(worker, host_threads))
    if _threads.get() != threads:
        _threads.set_num_threads(int(threads))


def _host_threads() -> dict[str, int] | None:
    """Dask threads per host of the current distributed client's cluster (None without a client)."""
    if "distributed" not in sys.modules:
        return None
    try:
        from distributed import default_client

        client = default_client()
    except (ImportError, ValueError):  # no client: the workers fall back to their own thread counts
        return None
    try:
        info = client.scheduler_info(n_workers=-1)  # all workers (newer distributed lists 5 by default)
    except TypeError:  # an older distributed without n_workers: it lists them all
        info = client.scheduler_info()
    out: dict[str, int] = {}
    for w in info.get("workers", {}).values():
        host = w.get("host")
        if host is not None:
            out[host] = out.get(host, 0) + int(w.get("nthreads", 1) or 1)
    return out or None


# --------------------------------------------------------------------------------------------------
# running a model on one batch
# --------------------------------------------------------------------------------------------------
def _kind(model: Any, output: str) -> str:
    """Kind of model: "recurrent" (LSTM/GRU/RNN/Reversed), "sequential", or "decoder" (output="tokens")."""
    from .models import Reversed, Sequential, is_recurrent

    if output == "tokens":
        if any(callable(getattr(model, m, None)) for m in DECODE_METHODS):
            return "decoder"
        raise errors.UnsupportedError(
            f"output='tokens': the model needs a {'/'.join(DECODE_METHODS)} method (a Seq2Seq), "
            f"got {type(model).__name__}"
        )
    if isinstance(model, Sequential):
        return "sequential"
    if isinstance(model, Reversed) or is_recurrent(model):
        return "recurrent"
    raise errors.UnsupportedError(
        f"model: expected an rnnfast LSTM/GRU/RNN, Reversed or Sequential for output={output!r}, "
        f"got {type(model).__name__}"
    )


def _time_major(model: Any, kind: str) -> bool:
    if kind == "decoder":
        return False
    if kind == "sequential":
        try:
            return model._time_axis() == 0
        except StopIteration:  # no recurrent layer: whatever the first layer takes, batch first
            return False
    cfg = model.config()
    cfg = cfg["layer"] if cfg.get("type") == "Reversed" else cfg
    return not cfg.get("batch_first", False)


def _takes_lengths(model: Any, kind: str) -> bool:
    """A Sequential starting with Embedding(mask_zero=True) takes its lengths from the mask."""
    if kind != "sequential":
        return True
    from .models import Embedding

    first = next(iter(model), None)
    return not (isinstance(first, Embedding) and first.mask_zero)


def _decode(model: Any, x: np.ndarray, lengths: np.ndarray | None, decode_kwargs: Mapping[str, Any]):
    """-> (tokens (B, T') int64, lengths (B,) int64)."""
    method = next(getattr(model, m) for m in DECODE_METHODS if callable(getattr(model, m, None)))
    res = method(x, lengths, **dict(decode_kwargs))
    if hasattr(res, "tokens"):
        toks, lens = res.tokens, getattr(res, "lengths", None)
    elif isinstance(res, tuple) and len(res) >= 2:
        toks, lens = res[0], res[1]
    else:
        toks, lens = res, None
    toks = np.asarray(toks)
    if toks.ndim != 2 or toks.shape[0] != x.shape[0]:
        raise errors.ShapeError(
            f"{type(model).__name__} decode: expected tokens (B={x.shape[0]}, T), got shape {toks.shape}"
        )
    toks = toks.astype(np.int64, copy=False)
    if lens is None:
        lens = np.full(toks.shape[0], toks.shape[1], np.int64)
    return toks, np.minimum(np.asarray(lens, np.int64), toks.shape[1])


def _run_batch(
    model: Any,
    kind: str,
    output: str,
    x: np.ndarray,
    lengths: np.ndarray | None,
    decode_kwargs: Mapping[str, Any],
):
    """One batch, batch-first in and out.

    x: (B, T, ...) padded to the batch's longest sequence; lengths: (B,) or None (all T).
    Returns "last": (B, F); "sequence": (B, T, F); "tokens": (tokens (B, T'), lengths (B,)).
    """
    if kind == "decoder":
        return _decode(model, x, lengths, decode_kwargs)
    tm = _time_major(model, kind)
    xin = np.ascontiguousarray(np.swapaxes(x, 0, 1)) if tm else x
    lin = lengths if _takes_lengths(model, kind) else None
    if kind == "recurrent":
        out, state = model(xin, lengths=lin)
        if output == "last":
            from .models import _num_directions

            h_n = np.asarray(state[0] if isinstance(state, tuple) else state)
            return np.concatenate(list(h_n[-_num_directions(model) :]), axis=-1)
        y = np.asarray(out)
    else:
        y = np.asarray(model(xin, lengths=lin))
        if model.many_to_one:
            if output == "sequence":
                raise errors.UnsupportedError(
                    "output='sequence': this Sequential is many_to_one (one vector per sequence); use "
                    "output='last'"
                )
            return y
    if y.ndim < 3:
        raise errors.ShapeError(f"model output: expected per-step outputs (T, B, F), got shape {y.shape}")
    y = np.swapaxes(y, 0, 1) if tm else y  # (B, T, F)
    if output == "sequence":
        return y
    B, T = y.shape[0], y.shape[1]
    idx = np.full(B, T - 1, np.int64) if lengths is None else np.asarray(lengths, np.int64) - 1
    picked = y[np.arange(B), np.maximum(idx, 0)]
    return np.where((idx >= 0).reshape((B,) + (1,) * (picked.ndim - 1)), picked, 0).astype(y.dtype)


def _batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Indices of each batch: the sequences sorted by length (stable), cut every batch_size."""
    order = np.argsort(lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, order.size, batch_size)]


def _check_output(output: str) -> None:
    if output not in OUTPUTS:
        raise errors.ShapeError(f"output: expected one of {OUTPUTS}, got {output!r}")


def _check_batch_size(batch_size: Any) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise errors.ShapeError(f"batch_size: expected an int >= 1, got {batch_size!r}")
    return int(batch_size)


def _check_lengths(lengths: Any, n: int, T: int) -> np.ndarray:
    arr = np.asarray(lengths)
    if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise errors.DTypeError(f"lengths: expected integers, got dtype {arr.dtype}")
    arr = arr.reshape(-1) if arr.size == n else arr
    if arr.shape != (n,):
        raise errors.ShapeError(f"lengths: expected shape ({n},) (one per sequence), got {arr.shape}")
    if n and (arr.min() < 0 or arr.max() > T):
        bad = int(np.flatnonzero((arr < 0) | (arr > T))[0])
        raise errors.ShapeError(f"lengths[{bad}]: expected in [0, {T}] (T = {T}), got {int(arr[bad])}")
    return arr.astype(np.int64)


def predict_padded(
    model: Any,
    x: Any,
    lengths: Any = None,
    output: str = "last",
    batch_size: int = 256,
    decode_kwargs: Mapping[str, Any] | None = None,
    pad_token: int = -1,
) -> np.ndarray:
    """Score padded sequences in this process, batched by length (what each dask array block runs).

    Parameters
    ----------
    model : an rnnfast LSTM/GRU/RNN, Reversed or Sequential (or, for output="tokens", a Seq2Seq-like
        model with a ``greedy_decode``/``decode``/``greedy`` method)
    x : (N, T) token ids or (N, T, I) features, batch first whatever the model's layout
    lengths : (N,) valid steps per sequence in [0, T], or None (all T)
    output : "last", "sequence" or "tokens" (see the module docstring)
    batch_size : sequences per call of the model

    Returns
    -------
    "last": (N, F) float32; "sequence": (N, T, F) float32, 0 past each length;
    "tokens": (N, T') int64 padded with ``pad_token`` past each decoded length (T' = the longest decode,
    or ``decode_kwargs["max_len"]`` when given).
    """
    _check_output(output)
    bs = _check_batch_size(batch_size)
    kind = _kind(model, output)
    xa = np.asarray(x)
    if xa.ndim < 2:
        raise errors.ShapeError(f"x: expected (N, T) tokens or (N, T, I) features, got shape {xa.shape}")
    N, T = xa.shape[0], xa.shape[1]
    lens = None if lengths is None else _check_lengths(lengths, N, T)
    return _predict_padded(model, kind, output, xa, lens, bs, decode_kwargs or {}, pad_token)


def _predict_padded(model, kind, output, xa, lens, bs, decode_kwargs, pad_token):
    N, T = xa.shape[0], xa.shape[1]
    if lens is not None and not _takes_lengths(model, kind):
        raise errors.ShapeError("lengths: not allowed with Embedding(mask_zero=True): the mask gives them")
    eff = np.full(N, T, np.int64) if lens is None else lens
    results: list[Any] = []
    batches = _batches(eff, bs) if N else []
    for idx in batches:
        Tb = int(eff[idx].max()) if lens is not None else T
        Tb = max(Tb, 1) if T else 0
        xb = np.ascontiguousarray(xa[idx, :Tb])
        results.append(_run_batch(model, kind, output, xb, None if lens is None else eff[idx], decode_kwargs))
    return _assemble_padded(results, batches, N, T, output, eff, decode_kwargs, pad_token, model, kind, xa)


def _assemble_padded(results, batches, N, T, output, eff, decode_kwargs, pad_token, model, kind, xa):
    if output == "tokens":
        width = decode_kwargs.get("max_len")
        width = int(width) if width is not None else max([r[0].shape[1] for r in results], default=0)
        out = np.full((N, width), pad_token, np.int64)
        for (toks, tl), idx in zip(results, batches):
            w = min(width, toks.shape[1])
            keep = np.arange(w)[None, :] < tl[:, None]
            out[idx, :w] = np.where(keep, toks[:, :w], pad_token)
        return out
    if not results:  # N == 0: the trailing shape from a probe
        trailing = _probe_trailing(model, kind, output, xa, decode_kwargs)
        return np.zeros((0,) + trailing, np.float32)
    first = results[0]
    if output == "last":
        out = np.empty((N,) + first.shape[1:], first.dtype)
        for r, idx in zip(results, batches):
            out[idx] = r
        return out
    out = np.zeros((N, T) + first.shape[2:], first.dtype)
    for r, idx in zip(results, batches):
        Tb = r.shape[1]
        # positions past each sequence's length are 0, whatever the model computes there
        mask = np.arange(Tb)[None, :] < eff[idx][:, None]
        out[idx, :Tb] = np.where(mask.reshape(mask.shape + (1,) * (r.ndim - 2)), r, 0)
    return out


def _probe_trailing(model, kind, output, xa, decode_kwargs) -> tuple[int, ...]:
    """Trailing output shape (after N, and T for "sequence"), from the model run on one zero step."""
    probe = np.zeros((1, 1) + tuple(xa.shape[2:]), xa.dtype)
    r = _run_batch(model, kind, output, probe, np.ones(1, np.int64), decode_kwargs)
    if output == "tokens":
        return ()
    return tuple(r.shape[1:]) if output == "last" else tuple(r.shape[2:])


def predict_sequences(
    model: Any,
    sequences: Sequence[Any],
    output: str = "last",
    batch_size: int = 256,
    decode_kwargs: Mapping[str, Any] | None = None,
) -> list[np.ndarray]:
    """Score variable-length sequences in this process (what each bag/dataframe partition runs).

    Parameters
    ----------
    sequences : a sequence of (T_i,) token ids or (T_i, I) features (all the same trailing shape)

    Returns
    -------
    A list in the input order: "last": (F,) each; "sequence": (T_i, F) each; "tokens": (T'_i,) int64 each
    (the decoded tokens up to their length).
    """
    _check_output(output)
    bs = _check_batch_size(batch_size)
    kind = _kind(model, output)
    return _predict_sequences(model, kind, output, sequences, bs, decode_kwargs or {})


def _predict_sequences(model, kind, output, sequences, bs, decode_kwargs) -> list[np.ndarray]:
    seqs = []
    for i, s in enumerate(sequences):
        if hasattr(s, "detach"):
            s = s.detach().cpu().numpy()
        try:
            a = np.asarray(s)
        except Exception as exc:  # noqa: BLE001 - ragged nested lists and the like
            raise errors.DTypeError(
                f"sequence {i}: expected an array, got {type(s).__name__} ({exc})"
            ) from None
        if a.ndim == 0 or a.dtype.kind not in "fiub":
            raise errors.ShapeError(
                f"sequence {i}: expected (T,) token ids or (T, I) features, "
                f"got shape {a.shape} dtype {a.dtype}"
            )
        if seqs and (a.shape[1:] != seqs[0].shape[1:] or a.ndim != seqs[0].ndim):
            raise errors.ShapeError(
                f"sequence {i}: expected trailing shape {seqs[0].shape[1:]} like sequence 0, "
                f"got shape {a.shape}"
            )
        seqs.append(a)
    n = len(seqs)
    if n == 0:
        return []
    lens = np.array([a.shape[0] for a in seqs], np.int64)
    dtype = np.result_type(*{a.dtype for a in seqs})
    takes = _takes_lengths(model, kind)
    out: list[Any] = [None] * n
    for idx in _batches(lens, bs):
        Tb = max(int(lens[idx].max()), 1)
        xb = np.zeros((idx.size, Tb) + seqs[0].shape[1:], dtype)
        for j, k in enumerate(idx):
            xb[j, : lens[k]] = seqs[k]
        lb = lens[idx] if takes else None
        r = _run_batch(model, kind, output, xb, lb, decode_kwargs)
        if output == "tokens":
            toks, tl = r
            for j, k in enumerate(idx):
                out[k] = toks[j, : tl[j]].copy()
        elif output == "last":
            for j, k in enumerate(idx):
                out[k] = r[j].copy()
        else:
            for j, k in enumerate(idx):
                out[k] = r[j, : lens[k]].copy()
    return out


# --------------------------------------------------------------------------------------------------
# partition functions (run on the workers; module-level so they pickle by reference)
# --------------------------------------------------------------------------------------------------
def _block_fn(x, lengths, handle, output, bs, decode_kwargs, pad_token, threads, host_threads):
    _apply_threads(threads, host_threads)
    model = _model_for_task(handle)
    kind = _kind(model, output)
    lens = None if lengths is None else np.asarray(lengths).reshape(-1).astype(np.int64)
    return _predict_padded(model, kind, output, np.asarray(x), lens, bs, decode_kwargs, pad_token)


def _block_fn_nolengths(x, handle, output, bs, decode_kwargs, pad_token, threads, host_threads):
    return _block_fn(x, None, handle, output, bs, decode_kwargs, pad_token, threads, host_threads)


def _bag_fn(partition, handle, output, bs, decode_kwargs, threads, host_threads):
    _apply_threads(threads, host_threads)
    model = _model_for_task(handle)
    return _predict_sequences(model, _kind(model, output), output, list(partition), bs, decode_kwargs)


def _frame_fn(series, handle, output, bs, decode_kwargs, threads, host_threads, columns, name):
    import pandas as pd

    _apply_threads(threads, host_threads)
    model = _model_for_task(handle)
    res = _predict_sequences(model, _kind(model, output), output, list(series), bs, decode_kwargs)
    if output == "last":
        arr = np.stack(res) if res else np.zeros((0, len(columns)), np.float32)
        return pd.DataFrame(arr.reshape(len(res), -1), index=series.index, columns=columns)
    return pd.Series(res, index=series.index, name=name, dtype=object)


# --------------------------------------------------------------------------------------------------
# the entry point
# --------------------------------------------------------------------------------------------------
def predict(
    model: Any,
    data: Any,
    lengths: Any = None,
    output: str = "last",
    batch_size: int = 256,
    threads_per_worker: int | None = None,
    column: str | None = None,
    decode_kwargs: Mapping[str, Any] | None = None,
    pad_token: int = -1,
    scatter: bool = False,
) -> Any:
    """Score a dask collection of sequences with an rnnfast model on the workers. Lazy: returns a
    dask collection; call ``.compute()`` (or ``client.compute``/``persist``).

    Parameters
    ----------
    model : an rnnfast model (LSTM/GRU/RNN, Reversed, Sequential; for output="tokens" a model with a
        ``greedy_decode``/``decode``/``greedy`` method) or a :class:`ModelHandle`. It is shipped once per
        worker through the native safetensors format and loaded once per worker process.
    data : one of
        * a dask array (N, T) of token ids or (N, T, I) of features, padded, batch first. Chunks along N
          are the tasks; the other axes are merged into one chunk.
        * a dask bag whose elements are sequences (T_i,) or (T_i, I)
        * a dask Series (or a DataFrame with ``column=``) whose values are such sequences (an object
          column: create it with ``dask.config.set({"dataframe.convert-string": False})``, or dask
          turns the arrays into strings)
    lengths : with a dask array: (N,) valid steps (a dask array or a NumPy array), or None (all T)
    output : "last" | "sequence" | "tokens"
    batch_size : sequences per model call inside a partition (batched by length)
    threads_per_worker : rnnfast threads in each worker process; None = cores // dask threads on the
        worker's host (all workers of the host counted when a distributed client is active)
    decode_kwargs : keyword arguments of the decode method (max_len, start_token, end_token, ...)
    pad_token : padding of decoded tokens in the array result
    scatter : False (default): the model is one key of the task graph, sent with the graph and
        recomputable if every worker holding it dies. True: broadcast it to the workers of the active
        distributed client first (``client.scatter``) and keep the graph small: for big models (dask warns
        about graphs of several MiB); scattered data is lost if all its holders die.

    Returns
    -------
    dask array: "last" (N, F), "sequence" (N, T, F), "tokens" (N, T') int64.
    dask bag: one array per element, in order. dask Series/DataFrame, same index: "last" a DataFrame
    with columns out_0..out_{F-1}; "sequence"/"tokens" a Series of arrays named "prediction".
    """
    _require_dask()
    import dask

    _check_output(output)
    bs = _check_batch_size(batch_size)
    if threads_per_worker is not None:
        if (
            isinstance(threads_per_worker, bool)
            or not isinstance(threads_per_worker, (int, np.integer))
            or threads_per_worker < 1
        ):
            raise errors.ShapeError(
                f"threads_per_worker: expected an int >= 1 or None, got {threads_per_worker!r}"
            )
        threads_per_worker = int(threads_per_worker)
    handle = model if isinstance(model, ModelHandle) else ModelHandle(model)
    local = handle.get()  # checks the round trip and the model kind here, before any task runs
    kind = _kind(local, output)
    dkw = dict(decode_kwargs or {})
    host_threads = _host_threads()
    if scatter:
        try:
            from distributed import default_client

            client = default_client()
        except (ImportError, ValueError) as exc:
            raise errors.UnsupportedError("scatter=True: needs an active distributed Client") from exc
        hd = client.scatter(handle, broadcast=True)  # key from __dask_tokenize__: the content hash
    else:
        hd = dask.delayed(handle, name=f"rnnfast-model-{handle.digest}", pure=True, traverse=False)

    if _is_dask_array(data):
        return _predict_array(
            local, kind, data, lengths, hd, output, bs, dkw, pad_token, threads_per_worker, host_threads
        )
    if lengths is not None:
        raise errors.ShapeError(
            "lengths: only used with a dask array; bag/dataframe sequences carry their own"
        )
    if _is_dask_bag(data):
        return data.map_partitions(_bag_fn, hd, output, bs, dkw, threads_per_worker, host_threads)
    if _is_dask_frame(data):
        return _predict_frame(
            local, kind, data, column, hd, output, bs, dkw, threads_per_worker, host_threads
        )
    raise errors.UnsupportedError(
        f"data: expected a dask array, bag, Series or DataFrame, got {type(data).__name__} "
        "(for NumPy data use predict_padded / predict_sequences)"
    )


def _is_dask_array(data: Any) -> bool:
    mod = sys.modules.get("dask.array")
    return mod is not None and isinstance(data, mod.Array)


def _is_dask_bag(data: Any) -> bool:
    mod = sys.modules.get("dask.bag")
    return mod is not None and isinstance(data, mod.Bag)


def _is_dask_frame(data: Any) -> bool:
    mod = sys.modules.get("dask.dataframe")
    return mod is not None and isinstance(data, (mod.DataFrame, mod.Series))


def _predict_array(local, kind, data, lengths, hd, output, bs, dkw, pad_token, threads, host_threads):
    import dask.array as da

    if data.ndim < 2:
        raise errors.ShapeError(f"data: expected (N, T) tokens or (N, T, I) features, got {data.ndim}-D")
    if any(np.isnan(s) for s in data.shape[1:]):
        raise errors.ShapeError(f"data: the trailing dimensions must be known, got shape {data.shape}")
    data = data.rechunk({i: -1 for i in range(1, data.ndim)})
    N, T = data.shape[0], int(data.shape[1])
    if lengths is not None and not _takes_lengths(local, kind):
        raise errors.ShapeError("lengths: not allowed with Embedding(mask_zero=True): the mask gives them")
    probe_x = np.zeros((0,) + tuple(int(s) for s in data.shape[1:]), data.dtype)
    if output == "tokens":
        width = dkw.get("max_len")
        if width is None:
            raise errors.ShapeError(
                "decode_kwargs: output='tokens' on a dask array needs decode_kwargs['max_len'] (the width of "
                "the token array)"
            )
        trailing: tuple[int, ...] = (int(width),)
        dtype = np.dtype(np.int64)
    else:
        inner = _probe_trailing(local, kind, output, probe_x, dkw)
        trailing = inner if output == "last" else (T,) + inner
        dtype = np.dtype(np.float32)
    out_ndim = 1 + len(trailing)
    kw: dict[str, Any] = {}
    if out_ndim < data.ndim:
        kw["drop_axis"] = list(range(out_ndim, data.ndim))
    elif out_ndim > data.ndim:
        kw["new_axis"] = list(range(data.ndim, out_ndim))
    chunks = (data.chunks[0],) + tuple((s,) for s in trailing)
    meta = np.empty((0,) * out_ndim, dtype)
    args = (output, bs, dkw, pad_token, threads, host_threads)
    if lengths is None:
        return da.map_blocks(
            _block_fn_nolengths, data, hd, *args, chunks=chunks, dtype=dtype, meta=meta, **kw
        )
    if not isinstance(lengths, da.Array):
        lens_np = np.asarray(lengths)
        if lens_np.shape != (N,):
            raise errors.ShapeError(f"lengths: expected shape ({N},) (one per sequence), got {lens_np.shape}")
        lengths = da.from_array(lens_np, chunks=(data.chunks[0],))
    if lengths.ndim != 1 or (not np.isnan(N) and lengths.shape[0] != N):
        raise errors.ShapeError(f"lengths: expected shape ({N},) (one per sequence), got {lengths.shape}")
    if lengths.chunks[0] != data.chunks[0]:
        lengths = lengths.rechunk((data.chunks[0],))
    # same rank as data so that map_blocks pairs the blocks along N (it aligns trailing axes otherwise)
    lens_nd = lengths.reshape(lengths.shape + (1,) * (data.ndim - 1))
    return da.map_blocks(_block_fn, data, lens_nd, hd, *args, chunks=chunks, dtype=dtype, meta=meta, **kw)


def _predict_frame(local, kind, data, column, hd, output, bs, dkw, threads, host_threads):
    import dask.dataframe as dd
    import pandas as pd

    if isinstance(data, dd.DataFrame):
        if column is None:
            raise errors.ShapeError("column: expected the name of the column holding the sequences, got None")
        if column not in data.columns:
            raise errors.ShapeError(f"column: {column!r} is not a column (columns: {list(data.columns)})")
        series = data[column]
    else:
        series = data
    if series.dtype != object:
        raise errors.DTypeError(
            f"data: expected an object column of sequences (arrays or lists), got dtype {series.dtype}; "
            "dask converts object columns to strings unless created under "
            "dask.config.set({'dataframe.convert-string': False})"
        )
    args = (hd, output, bs, dkw, threads, host_threads)
    if output == "last":
        # the width of the output from a probe on one sequence of one step (token 0 / zero features)
        probe = _probe_frame_width(local, kind, dkw)
        columns = [f"out_{j}" for j in range(probe)]
        meta = pd.DataFrame({c: pd.Series([], dtype=np.float32) for c in columns})
        return series.map_partitions(_frame_fn, *args, columns, "prediction", meta=meta)
    meta = pd.Series([], dtype=object, name="prediction")
    return series.map_partitions(_frame_fn, *args, None, "prediction", meta=meta)


def _probe_frame_width(local, kind, dkw) -> int:
    """Output width for output="last" without reading the data: tokens when the model starts with an
    Embedding, else features of the first recurrent layer's input_size."""
    from .models import Embedding

    first = next(iter(local), None) if kind == "sequential" else local
    if isinstance(first, Embedding):
        probe = np.zeros((0, 1), np.int64)
    else:
        cfg = first.config() if first is not None else {}
        cfg = cfg.get("layer", cfg) if cfg.get("type") == "Reversed" else cfg
        if "input_size" in cfg:
            probe = np.zeros((0, 1, int(cfg["input_size"])), np.float32)
        elif "in_features" in cfg:
            probe = np.zeros((0, 1, int(cfg["in_features"])), np.float32)
        else:
            raise errors.UnsupportedError(
                f"cannot tell the input of {type(first).__name__}; use a dask bag instead of a dataframe"
            )
    trailing = _probe_trailing(local, kind, "last", probe, dkw)
    return int(np.prod(trailing)) if trailing else 1
