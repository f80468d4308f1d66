"""The ``rnnfast info``, ``rnnfast convert``, ``rnnfast run`` and ``rnnfast generate`` sub-commands.

Exit codes: 0 success; 1 the model or data could not be used (the message on stderr names the file and
the problem); 2 usage errors (argparse) and unavailable commands.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import numpy as np

from . import errors

FORMAT_NAMES = {
    "native": "rnnfast native (safetensors)",
    "torch": "PyTorch state_dict",
    "onnx": "ONNX",
    "keras": "Keras 3 archive (.keras)",
    "keras_weights": "Keras 3 weights (.weights.h5)",
}


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    arch_help = (
        "architecture for files that hold only weights: an rnnfast config JSON (for .pt/.pth and plain "
        "safetensors) or a Keras config.json / .keras file (for .weights.h5)"
    )
    if name == "info":
        parser.add_argument("file", help="model file (.safetensors, .pt/.pth, .onnx, .keras, .weights.h5)")
        parser.add_argument("--architecture", metavar="PATH", help=arch_help)
        parser.add_argument("--json", action="store_true", help="print the description as JSON")
    elif name == "convert":
        parser.add_argument("input", help="model file of any supported format")
        parser.add_argument("output", help="native rnnfast file to write (.safetensors)")
        parser.add_argument("--architecture", metavar="PATH", help=arch_help)
    elif name == "run":
        parser.add_argument("model", help="model file of any supported format")
        parser.add_argument("--input", metavar="X.npy", help="input array (.npy)")
        parser.add_argument(
            "--feed",
            action="append",
            default=[],
            metavar="NAME=X.npy",
            help="an input of an ONNX graph by name (repeatable; for graphs with several inputs)",
        )
        parser.add_argument(
            "--output",
            required=True,
            metavar="Y.npy",
            help="where to write the output (.npy; .npz keeps every output of a multi-output model)",
        )
        parser.add_argument(
            "--lengths", metavar="L.npy", help="valid steps per sequence, (B,) integers (.npy)"
        )
        parser.add_argument("--architecture", metavar="PATH", help=arch_help)
    elif name == "generate":
        from . import train

        train.add_generate_arguments(parser)
    else:  # pragma: no cover - cli.py only dispatches the names above
        raise ValueError(f"unknown command {name!r}")


def run(args: argparse.Namespace) -> int:
    command = getattr(args, "command", None)
    if command == "generate":
        from . import train

        return train.run_generate(args)
    handler = {"info": _info, "convert": _convert, "run": _run}.get(command)
    if handler is None:
        print(f"rnnfast: unknown command {command!r}", file=sys.stderr)
        return 2
    try:
        return handler(args)
    except errors.RnnfastError as exc:
        print(f"rnnfast {command}: error: {exc}", file=sys.stderr)
        return 1
    except MemoryError:
        print(f"rnnfast {command}: error: out of memory", file=sys.stderr)
        return 1
    except OSError as exc:
        name = exc.filename or ""
        print(f"rnnfast {command}: error: {name}: {exc.strerror or exc}", file=sys.stderr)
        return 1


# --------------------------------------------------------------------------------------------------
def _load(path: str, architecture: str | None) -> tuple[Any, str]:
    from .loaders import detect_format, load

    fmt = detect_format(path)
    return load(path, architecture=architecture, format=fmt), fmt


def describe_model(model: Any) -> dict:
    from .models import describe

    rows = describe(model)
    layers = [
        {"name": n, "type": t, "parameters": p, "shapes": {k: list(v) for k, v in s.items()}}
        for n, t, s, p in rows
    ]
    total = (
        model.num_parameters() if hasattr(model, "num_parameters") else sum(r["parameters"] for r in layers)
    )
    cfg = model.config()
    out = {"model": cfg.get("type"), "layers": layers, "parameters": int(total)}
    if cfg.get("type") == "Sequential":
        out["many_to_one"] = cfg.get("many_to_one", False)
    if cfg.get("type") == "OnnxGraph":
        out["opset"] = cfg.get("opset")
        out["inputs"] = cfg.get("inputs")
        out["outputs"] = cfg.get("outputs")
        out["ops"] = model.op_counts()
    return out


def _info(args: argparse.Namespace) -> int:
    model, fmt = _load(args.file, args.architecture)
    d = describe_model(model)
    d = {"file": args.file, "format": fmt, "format_name": FORMAT_NAMES.get(fmt, fmt), **d}
    if args.json:
        print(json.dumps(d, indent=2))
        return 0
    print(f"file:       {args.file}")
    print(f"format:     {d['format_name']}")
    model_line = d["model"] + (" (many-to-one)" if d.get("many_to_one") else "")
    if d["model"] == "OnnxGraph":
        model_line += f", opset {d['opset']}"
    print(f"model:      {model_line}")
    if d["model"] == "OnnxGraph":
        for i in d["inputs"]:
            shape = tuple(s if isinstance(s, int) else "?" for s in i["shape"] or [])
            print(f"input:      {i['name']} {i['dtype']} {shape}")
        print(f"outputs:    {', '.join(d['outputs'])}")
        print(f"ops:        {', '.join(f'{k} x{v}' for k, v in d['ops'].items())}")
    print("layers:")
    width = max([len(r["name"]) for r in d["layers"]] + [4])
    twidth = max([len(r["type"]) for r in d["layers"]] + [4])
    for r in d["layers"]:
        shapes = ", ".join(f"{k} {tuple(v)}" for k, v in r["shapes"].items())
        print(f"  {r['name']:<{width}}  {r['type']:<{twidth}}  {r['parameters']:>10,d}  {shapes}")
    print(f"parameters: {d['parameters']:,d}")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from .loaders import load, save

    model, fmt = _load(args.input, args.architecture)
    out = args.output
    if os.path.isdir(out):
        raise errors.FormatError(f"{out}: is a directory")
    save(model, out)
    back = load(out)  # verify what was written reads back
    n = back.num_parameters() if hasattr(back, "num_parameters") else 0
    print(
        f"converted {args.input} ({FORMAT_NAMES.get(fmt, fmt)}) -> {out} (rnnfast native, {n:,d} parameters)"
    )
    return 0


def _load_npy(path: str, what: str) -> np.ndarray:
    if not os.path.isfile(path):
        raise errors.FormatError(f"{path}: no such file ({what})")
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise errors.FormatError(f"{path}: not a plain .npy array ({what}): {exc}") from exc
    except OSError as exc:
        raise errors.FormatError(f"{path}: cannot read {what}: {exc}") from exc
    if isinstance(arr, np.lib.npyio.NpzFile):
        arr.close()
        raise errors.FormatError(f"{path}: expected a .npy file for {what}, got an .npz archive")
    if arr.dtype.kind not in "fiub":
        raise errors.DTypeError(f"{path}: {what} must be numeric, got dtype {arr.dtype}")
    return arr


def _run(args: argparse.Namespace) -> int:
    if not args.input and not args.feed:
        raise errors.ShapeError("give the input with --input X.npy (or --feed NAME=X.npy for ONNX graphs)")
    if args.input and args.feed:
        raise errors.ShapeError("give either --input or --feed, not both")
    model, _ = _load(args.model, args.architecture)
    lengths = _load_npy(args.lengths, "--lengths") if args.lengths else None
    if args.feed:
        if not hasattr(model, "run") or not hasattr(model, "input_names"):
            raise errors.UnsupportedError(f"{args.model}: --feed is for ONNX graphs; use --input")
        if lengths is not None:
            raise errors.ShapeError(
                "--lengths cannot be combined with --feed: feed the lengths input by name"
            )
        feeds = {}
        for item in args.feed:
            name, sep, file = item.partition("=")
            if not sep or not name or not file:
                raise errors.ShapeError(f"--feed expects NAME=FILE.npy, got {item!r}")
            feeds[name] = _load_npy(file, f"--feed {name}")
        res = model.run(feeds)
        outputs = [res[o] for o in model.outputs]
    else:
        x = _load_npy(args.input, "--input")
        result = model(x, lengths=lengths) if lengths is not None else model(x)
        outputs = list(result) if isinstance(result, tuple) else [result]
    if type(model).__name__ in ("LSTM", "GRU", "RNN", "Reversed"):
        outputs = [outputs[0]]  # a bare recurrent layer: the per-step output
    outputs = [np.asarray(o) for o in outputs]
    if args.output.lower().endswith(".npz"):
        np.savez(args.output, *outputs)
    else:
        if len(outputs) > 1:
            print(
                f"rnnfast run: note: the model has {len(outputs)} outputs; writing the first (use .npz for all)",
                file=sys.stderr,
            )
        with open(args.output, "wb") as f:
            np.save(f, outputs[0], allow_pickle=False)
    print(f"wrote {args.output}: shape {tuple(outputs[0].shape)} {outputs[0].dtype}")
    return 0
