"""Score many variable-length sequences with rnnfast on a Dask cluster and print the throughput.

    python examples/dask_predict.py                                  # a LocalCluster on 127.0.0.1
    python examples/dask_predict.py --workers 2 --threads-per-worker 1 --sequences 50000 --mode array
    python examples/dask_predict.py --scheduler tcp://10.0.0.5:8786  # an existing cluster instead
    python examples/dask_predict.py --model model.safetensors        # your model (token ids in)

The model (by default a random Embedding -> bidirectional LSTM -> Linear -> Softmax sentiment-style
classifier) is shipped to every worker once, as native safetensors bytes, and loaded once per worker
process. The data is generated on the workers (random token ids, random lengths), persisted, then scored:
``--mode bag`` as a dask bag of variable-length sequences (each partition batched by length),
``--mode array`` as a padded (N, T) dask array with a lengths array.

The local cluster listens on 127.0.0.1 only. Needs ``pip install 'dask[distributed]'``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import rnnfast
import rnnfast.dask as rd


def build_model(vocab: int, emb: int, hidden: int, classes: int) -> rnnfast.Sequential:
    return rnnfast.Sequential(
        {
            "emb": rnnfast.Embedding(vocab, emb, seed=0),
            "rnn": rnnfast.LSTM(emb, hidden, batch_first=True, bidirectional=True, seed=1),
            "fc": rnnfast.Linear(2 * hidden, classes, seed=2),
            "out": rnnfast.Softmax(),
        },
        many_to_one=True,
    )


def make_partition(part: list[int], n: int, vocab: int, min_len: int, max_len: int) -> list[np.ndarray]:
    """Sequences of partition ``part[0]``: reproducible from the partition number alone."""
    rng = np.random.default_rng(1000 + part[0])
    lens = rng.integers(min_len, max_len + 1, n)
    return [rng.integers(1, vocab, k, dtype=np.int64) for k in lens]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scheduler", help="address of a running scheduler (default: start a LocalCluster)")
    p.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes")
    p.add_argument("--threads-per-worker", type=int, default=1, help="LocalCluster dask threads per worker")
    p.add_argument(
        "--rnnfast-threads",
        type=int,
        default=None,
        help="rnnfast threads per worker (default: cores // dask threads on the host)",
    )
    p.add_argument("--mode", choices=("bag", "array"), default="bag")
    p.add_argument("--sequences", type=int, default=20000)
    p.add_argument("--partitions", type=int, default=16)
    p.add_argument("--min-len", type=int, default=5)
    p.add_argument("--max-len", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--model", help="an rnnfast-loadable model taking token ids (default: a random one)")
    p.add_argument("--vocab", type=int, default=5000)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument(
        "--local",
        action="store_true",
        help="also score the same data in this process (dask's synchronous scheduler)",
    )
    args = p.parse_args(argv)

    import dask.array as da
    import dask.bag as db
    from distributed import Client, LocalCluster, wait

    if args.model:
        model = rnnfast.load(args.model)
        vocab = next(iter(model)).num_embeddings if isinstance(model, rnnfast.Sequential) else args.vocab
    else:
        vocab = args.vocab
        model = build_model(vocab, 64, args.hidden, 4)

    cluster = None
    if args.scheduler:
        client = Client(args.scheduler)
    else:
        cluster = LocalCluster(
            host="127.0.0.1",
            n_workers=args.workers,
            threads_per_worker=args.threads_per_worker,
            processes=True,
            dashboard_address="127.0.0.1:0",
        )  # loopback only
        client = Client(cluster)
    try:
        info = client.scheduler_info(n_workers=-1)
        n_threads = sum(w["nthreads"] for w in info["workers"].values())
        print(f"scheduler {info['address']}: {len(info['workers'])} workers, {n_threads} dask threads")

        per = -(-args.sequences // args.partitions)
        bag = db.from_sequence(range(args.partitions), npartitions=args.partitions).map_partitions(
            make_partition, per, vocab, args.min_len, args.max_len
        )
        if args.mode == "bag":
            data, lengths = bag.persist(), None
            wait(data)
            lens = np.concatenate(data.map_partitions(lambda s: [np.array([len(x) for x in s])]).compute())
        else:
            lens_b = bag.map_partitions(lambda s: [np.array([len(x) for x in s], np.int64)])
            padded = bag.map_partitions(
                lambda s: [np.stack([np.pad(x, (0, args.max_len - len(x))) for x in s])]
            )
            data = da.concatenate(
                [da.from_delayed(d[0], (per, args.max_len), np.int64) for d in padded.to_delayed()]
            )
            lengths = da.concatenate([da.from_delayed(d[0], (per,), np.int64) for d in lens_b.to_delayed()])
            data, lengths = client.persist([data, lengths])
            wait([data, lengths])
            lens = lengths.compute()
        n, steps = len(lens), int(lens.sum())

        scores = rd.predict(
            model,
            data,
            lengths,
            output="last",
            batch_size=args.batch_size,
            threads_per_worker=args.rnnfast_threads,
        )
        t0 = time.perf_counter()
        out = scores.compute()  # the first run includes shipping and loading the model on each worker
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = scores.compute()
        dt = time.perf_counter() - t0
        out = np.stack(out) if isinstance(out, list) else out
        print(
            f"scored {n} sequences ({steps} tokens, lengths {lens.min()}..{lens.max()}) -> {out.shape} "
            f"in {dt:.2f} s (first run {first:.2f} s): {n / dt:,.0f} sequences/s, {steps / dt:,.0f} tokens/s"
        )
        for w, i in sorted(client.run(rd.cache_info).items()):
            print(
                f"  worker {w}: pid {i['pid']}, model loads {sum(i['loads'].values())}, "
                f"partitions scored {sum(i['tasks'].values())}, "
                f"rnnfast threads {i['num_threads'] or 'default'}"
            )
        if args.local:
            local_data = (
                data.compute()
                if args.mode == "array"
                else db.from_sequence(bag.compute(), npartitions=args.partitions)
            )
            local_scores = rd.predict(
                model,
                local_data if args.mode == "bag" else da.from_array(local_data, chunks=per),
                None if lengths is None else lens,
                batch_size=args.batch_size,
            )
            t0 = time.perf_counter()
            ref = local_scores.compute(scheduler="sync")
            lt = time.perf_counter() - t0
            ref = np.stack(ref) if isinstance(ref, list) else ref
            same = "identical" if np.array_equal(ref, out) else f"max diff {np.abs(ref - out).max():.2g}"
            print(
                f"this process (sync scheduler, rnnfast threads {rnnfast.get_num_threads()}): {lt:.2f} s, "
                f"{n / lt:,.0f} sequences/s; results {same}"
            )
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
