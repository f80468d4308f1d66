"""PyTorch models -> rnnfast: modules (``from_torch``) and state_dict files (``.pt``/``.pth``).

``from_torch(module)`` converts nn.RNN/LSTM/GRU (delegated to the core's
``rnnfast.loaders.torch.from_torch_rnn``), nn.Embedding, nn.Linear, nn.Softmax/LogSoftmax/Sigmoid/Tanh/
ReLU, nn.Dropout/Identity (dropped: inference) and nn.Sequential. A custom ``nn.Module`` is converted
with ``children_in_order=True``: its children, in registration order, become an
:class:`rnnfast.Sequential` (the user states that ``forward`` chains them; ``many_to_one=True`` when it
feeds the last recurrent layer's final hidden state onward).

``.pt``/``.pth`` files are read with ``torch.load(weights_only=True)`` ONLY: rnnfast never unpickles
arbitrary objects. A state_dict carries no architecture, so the user gives it (an rnnfast model or its
config). PyTorch is imported lazily.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np

from .. import errors
from .. import models as M


def _torch():
    try:
        import torch
    except ImportError as exc:
        raise errors.UnsupportedError("PyTorch is not installed: it is needed to read this model") from exc
    return torch


def to_numpy(t: Any) -> np.ndarray:
    """A torch tensor (or anything array-like) as a NumPy array; bfloat16/half widened to float32."""
    if hasattr(t, "detach"):
        t = t.detach().cpu()
        if t.dtype.is_floating_point and t.dtype not in (_torch().float32, _torch().float64):
            t = t.float()
        return t.numpy().copy()
    return np.asarray(t)


def _rnn_from_torch(module: Any) -> Any:
    try:
        from .torch import from_torch_rnn  # the lead's converter for nn.RNN/LSTM/GRU
    except ImportError:
        from_torch_rnn = _from_torch_rnn_fallback
    return from_torch_rnn(module)


def _from_torch_rnn_fallback(module: Any) -> Any:
    """Used only while rnnfast.loaders.torch is missing: config from attributes, weights from state_dict."""
    torch = _torch()
    core = M._core()
    kw = {
        "input_size": module.input_size,
        "hidden_size": module.hidden_size,
        "num_layers": module.num_layers,
        "bias": module.bias,
        "batch_first": module.batch_first,
        "bidirectional": module.bidirectional,
    }
    if isinstance(module, torch.nn.LSTM):
        layer = core.LSTM(**kw, proj_size=module.proj_size)
    elif isinstance(module, torch.nn.GRU):
        layer = core.GRU(**kw)
    else:
        layer = core.RNN(**kw, nonlinearity=module.nonlinearity)
    layer.load_state_dict({k: to_numpy(v) for k, v in module.state_dict().items()})
    return layer


_SKIP = ("Dropout", "Identity", "AlphaDropout")


def from_torch(module: Any, *, many_to_one: bool = False, children_in_order: bool = False) -> Any:
    """Convert a PyTorch module to the equivalent rnnfast layer or model.

    Parameters
    ----------
    module : nn.RNN/LSTM/GRU/Embedding/Linear/Softmax/LogSoftmax/Sigmoid/Tanh/ReLU/Sequential, or any
        nn.Module whose children form a chain (with ``children_in_order=True``)
    many_to_one : for Sequential results: the last recurrent layer feeds its final hidden state onward
    children_in_order : convert a custom module as the Sequential of its children (named as in PyTorch,
        so the state_dict keys stay the same)

    Raises UnsupportedError naming the module type for anything else.
    """
    torch = _torch()
    nn = torch.nn
    if isinstance(module, (nn.LSTM, nn.GRU, nn.RNN)):
        return _rnn_from_torch(module)
    if isinstance(module, nn.Embedding):
        if module.max_norm is not None:
            raise errors.UnsupportedError("from_torch: nn.Embedding with max_norm (renormalises at lookup)")
        layer = M.Embedding(module.num_embeddings, module.embedding_dim, module.padding_idx)
        layer.load_state_dict({"weight": to_numpy(module.weight)})
        return layer
    if isinstance(module, nn.Linear):
        layer = M.Linear(module.in_features, module.out_features, bias=module.bias is not None)
        layer.load_state_dict({k: to_numpy(v) for k, v in module.state_dict().items()})
        return layer
    if isinstance(module, (nn.Softmax, nn.LogSoftmax)):
        if module.dim is None:
            raise errors.UnsupportedError(
                f"from_torch: nn.{type(module).__name__}(dim=None): give dim explicitly"
            )
        return (M.Softmax if isinstance(module, nn.Softmax) else M.LogSoftmax)(module.dim)
    for cls, ours in ((nn.Sigmoid, M.Sigmoid), (nn.Tanh, M.Tanh), (nn.ReLU, M.ReLU)):
        if isinstance(module, cls):
            return ours()
    if type(module).__name__ in _SKIP:
        return None
    if isinstance(module, nn.Sequential) or children_in_order:
        layers: OrderedDict[str, Any] = OrderedDict()
        for name, child in module.named_children():
            converted = from_torch(child)
            if converted is not None:
                layers[name] = converted
        leftover = [n for n, _ in module.named_parameters(recurse=False)]
        if leftover:
            raise errors.UnsupportedError(
                f"from_torch: {type(module).__name__} has its own parameters {leftover} outside its children"
            )
        return M.Sequential(layers, many_to_one=many_to_one)
    raise errors.UnsupportedError(
        f"from_torch: unsupported module {type(module).__name__}; supported: RNN, LSTM, GRU, Embedding, "
        "Linear, Softmax, LogSoftmax, Sigmoid, Tanh, ReLU, Dropout, Identity, Sequential "
        "(or a custom module with children_in_order=True)"
    )


# --------------------------------------------------------------------------------------------------
# state_dict files
# --------------------------------------------------------------------------------------------------
def read_pt_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a state_dict saved with ``torch.save(model.state_dict(), path)``.

    Only ``torch.load(weights_only=True)`` is used (tensors and plain containers; no code runs). A
    checkpoint dict holding the state_dict under "state_dict" / "model_state_dict" / "model" is accepted.
    """
    path = os.fspath(path)
    torch = _torch()
    if not os.path.isfile(path):
        raise errors.FormatError(f"{path}: no such file")
    obj = None
    last: Exception | None = None
    for mmap in (True, False):  # mmap: a declared storage size cannot make us allocate it
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            last = None
            break
        except Exception as exc:  # noqa: BLE001 - torch raises many types for corrupt files
            last = exc
            if "mmap" not in str(exc):
                break
    if last is not None:
        msg = str(last).strip().splitlines()[0] if str(last).strip() else type(last).__name__
        if "weights_only" in str(last) or "Unsupported global" in str(last):
            raise errors.FormatError(
                f"{path}: the file contains pickled objects other than tensors; rnnfast reads only state_dicts "
                f"with torch.load(weights_only=True) (save model.state_dict(), not the model): {msg[:300]}"
            ) from last
        raise errors.FormatError(f"{path}: not a readable PyTorch state_dict file: {msg[:300]}") from last
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise errors.FormatError(f"{path}: expected a state_dict (dict of tensors), got {type(obj).__name__}")
    out: dict[str, np.ndarray] = {}
    for k, v in obj.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise errors.FormatError(
                f"{path}: expected a state_dict (str -> tensor), entry {k!r} is {type(v).__name__}"
            )
        # a view may declare more elements than its storage holds (stride 0: a 2 KB file can describe a
        # 4 TiB tensor that to_numpy() would materialise): refuse it before anything is copied
        need, have = v.numel() * v.element_size(), v.untyped_storage().nbytes()
        if need > have:
            raise errors.FormatError(
                f"{path}: tensor {k!r} declares shape {tuple(v.shape)} ({need} bytes) but its storage holds "
                f"only {have} bytes (a broadcast or overlapping view: lying or hostile file)"
            )
        out[k] = v
    return out


def _tensor_values(sd: Mapping[str, Any], path: str) -> dict[str, np.ndarray]:
    out = {}
    for k, v in sd.items():
        a = to_numpy(v)
        if a.dtype.kind not in "fiub":
            raise errors.DTypeError(f"{path}: tensor {k!r} has unsupported dtype {a.dtype}")
        out[k] = a
    return out


def _groups(keys: list[str]) -> OrderedDict[str, list[str]]:
    g: OrderedDict[str, list[str]] = OrderedDict()
    for k in keys:
        head, _, tail = k.partition(".")
        g.setdefault(head if tail else "", []).append(tail if tail else head)
    return g


def remap_state_dict(given: Mapping[str, Any], expected: Mapping[str, Any], path: str) -> dict[str, Any]:
    """Rename the keys of ``given`` (a user's state_dict, values with ``.shape``) to those of ``expected``.

    Tried in order: identical keys; without a "module." prefix (DataParallel); a single layer saved under
    one prefix ("lstm.weight_ih_l0" -> "weight_ih_l0"); a Sequential whose layers are named differently
    from the saved module's attributes ("emb.weight" -> "0.weight"), matching layers by their parameter
    names and shapes (then by order when that is ambiguous). Raises StateDictError naming what is
    missing or unexpected otherwise.
    """
    given = dict(given)
    exp_keys = list(expected)

    def shape(v):
        return tuple(getattr(v, "shape", np.shape(v)))

    if set(given) == set(exp_keys):
        return given
    if all(k.startswith("module.") for k in given):
        stripped = {k[len("module.") :]: v for k, v in given.items()}
        if set(stripped) == set(exp_keys):
            return stripped
        given = stripped
    gg, eg = _groups(list(given)), _groups(exp_keys)
    if "" in eg and len(eg) == 1 and len(gg) == 1 and "" not in gg:
        (prefix,) = gg
        cand = {k[len(prefix) + 1 :]: v for k, v in given.items()}
        if set(cand) == set(exp_keys):
            return cand
    if "" not in eg and "" not in gg and len(eg) == len(gg):

        def sig(prefix, names, src, pre):
            return tuple(sorted((n, shape(src[f"{pre}.{n}"])) for n in names))

        gsig = OrderedDict((p, sig(p, n, given, p)) for p, n in gg.items())
        esig = OrderedDict((p, sig(p, n, expected, p)) for p, n in eg.items())
        mapping: dict[str, str] = {}
        used: set[str] = set()
        for ep, s in esig.items():
            cands = [gp for gp, t in gsig.items() if t == s and gp not in used]
            if not cands:
                mapping = {}
                break
            mapping[ep] = cands[0]  # first unused in saved order: order breaks ties
            used.add(cands[0])
        if mapping:
            out = {}
            for ep, names in eg.items():
                for n in names:
                    out[f"{ep}.{n}"] = given[f"{mapping[ep]}.{n}"]
            return out
    missing = sorted(set(exp_keys) - set(given))
    unexpected = sorted(set(given) - set(exp_keys))
    raise errors.StateDictError(
        f"{path}: the state_dict does not match the architecture: missing tensors {missing[:20]}; "
        f"unexpected tensors {unexpected[:20]}"
    )


def load_pt(path: str | os.PathLike, architecture: Any = None) -> Any:
    """Load a ``.pt``/``.pth`` state_dict into the model described by ``architecture``.

    architecture: an rnnfast model or layer (its config() is used; it is not modified), a config dict,
    or a path to a JSON config. Without it, a FormatError explains what is needed.
    """
    from .native import build_checked, check_and_load, resolve_architecture

    path = os.fspath(path)
    sd = read_pt_state_dict(path)
    if architecture is None:
        raise errors.FormatError(
            f"{path}: a PyTorch state_dict has no architecture; pass architecture= (e.g. an rnnfast.Sequential "
            "or rnnfast.LSTM with the same sizes, or its config) or convert the module with rnnfast.from_torch"
        )
    cfg = resolve_architecture(architecture, path)
    nbytes = sum(int(np.prod(v.shape)) * v.element_size() for v in sd.values())
    model = build_checked(cfg, nbytes, path)
    mapped = remap_state_dict(sd, model.state_dict(), path)
    return check_and_load(model, _tensor_values(mapped, path), path)


# the name rnnfast.loaders.torch.from_torch (the package-level rnnfast.from_torch) dispatches to
from_torch_module = from_torch
