"""Train a character-level language model with rnnfast and ship it for ``rnnfast generate``.

    python examples/char_lm.py                 # LSTM, writes rnnfast/data/char_lm.safetensors
    python examples/char_lm.py --cell gru --steps 300 --out /tmp/gru_lm.safetensors

Model: Embedding(V, 48) -> LSTM/GRU(48, hidden) -> Linear(hidden, V), trained on rnnfast/data/corpus.txt
(public-domain excerpts, see rnnfast/data/CORPUS_SOURCES.txt) to predict the next character, with
truncated backpropagation through time over B parallel streams of the text (the state is carried from
chunk to chunk, gradients stop at chunk boundaries), per-step cross-entropy, gradient clipping and Adam.
The defaults train in under a minute on one core (the held-out loss is checked every 50 steps and the best
parameters are kept: the text is small, longer training only memorizes it).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import rnnfast
from rnnfast import models, train

DATA = os.path.join(os.path.dirname(os.path.abspath(rnnfast.__file__)), "data")


def load_text(path: str) -> tuple[str, str, np.ndarray]:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    vocab = "".join(sorted(set(text)))
    index = {c: i for i, c in enumerate(vocab)}
    return text, vocab, np.array([index[c] for c in text], dtype=np.int64)


def stream_batches(ids: np.ndarray, batch: int, seq: int, seed: int):
    """epoch -> iterable of (x (T, B), y (T, B)): B contiguous streams, consecutive chunks of T steps."""

    def epoch(e: int):
        rng = np.random.default_rng(seed + e)
        start = int(rng.integers(0, seq))
        n = (len(ids) - 1 - start) // batch
        xs = ids[start : start + n * batch].reshape(batch, n).T  # (n, B): column b is stream b
        ys = ids[start + 1 : start + 1 + n * batch].reshape(batch, n).T
        for t in range(0, n - seq + 1, seq):
            yield xs[t : t + seq], ys[t : t + seq]

    return epoch


def build(vocab_size: int, cell: str, hidden: int, emb: int, seed: int):
    rnn = (rnnfast.LSTM if cell == "lstm" else rnnfast.GRU)(emb, hidden, seed=seed)
    return models.Sequential(
        {
            "emb": models.Embedding(vocab_size, emb, seed=seed),
            "rnn": rnn,
            "fc": models.Linear(hidden, vocab_size, seed=seed + 1),
        }
    )


def evaluate(net, ids: np.ndarray, batch: int = 8, seq: int = 200) -> float:
    """Mean next-character cross-entropy (nats) over ids, state carried (no gradients)."""
    net = net if isinstance(net, train.Trainable) else train.Trainable(net)
    total, count, state = 0.0, 0, None
    n = (len(ids) - 1) // batch
    xs, ys = ids[: n * batch].reshape(batch, n).T, ids[1 : 1 + n * batch].reshape(batch, n).T
    for t in range(0, n, seq):
        logits = net.forward(xs[t : t + seq], state=state)
        state = train.detach_state(net.final_state)
        loss, _ = train.cross_entropy(logits, ys[t : t + seq], need_grad=False)
        k = ys[t : t + seq].size
        total, count = total + loss * k, count + k
    return total / count


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--text", default=os.path.join(DATA, "corpus.txt"))
    ap.add_argument("--cell", choices=["lstm", "gru"], default="lstm")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--emb", type=int, default=48)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--steps", type=int, default=450)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="1 by default: on a shared machine small per-step GEMMs lose to BLAS threads contending",
    )
    ap.add_argument("--val-fraction", type=float, default=0.1, help="held-out share of the text")
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--out", default=os.path.join(DATA, "char_lm.safetensors"))
    args = ap.parse_args(argv)
    if args.threads:
        rnnfast.set_num_threads(args.threads)

    text, vocab, all_ids = load_text(args.text)
    h_uni = train.unigram_entropy(text)
    # held-out text: every k-th block of 500 characters (same mix of works as the training text)
    block = 500
    k = max(2, round(1 / args.val_fraction)) if args.val_fraction > 0 else 0
    is_val = (np.arange(len(all_ids)) // block) % k == k - 1 if k else np.zeros(len(all_ids), bool)
    ids, val_ids = all_ids[~is_val], all_ids[is_val]
    n_val = len(val_ids)
    model = build(len(vocab), args.cell, args.hidden, args.emb, args.seed)
    print(
        f"text: {len(text)} chars, vocabulary {len(vocab)}, unigram entropy {h_uni:.3f} nats/char; "
        f"model: {model.num_parameters():,} parameters"
    )
    net = train.Trainable(model)
    opt = train.Adam(net.parameters(), lr=args.lr)

    best = {"val": float("inf"), "step": 0, "params": None}

    def schedule(step: int, loss: float) -> None:
        if step == (2 * args.steps) // 3:  # halve the learning rate for the last third, and again
            opt.lr = args.lr / 2
        if step == (5 * args.steps) // 6:
            opt.lr = args.lr / 4
        if n_val and (step % args.eval_every == 0 or step == args.steps):  # early stopping on held-out text
            val = evaluate(net, val_ids)
            print(f"  step {step}: held-out loss {val:.3f} nats/char", flush=True)
            if val < best["val"]:
                best.update(val=val, step=step, params=net.state_dict())

    steps_per_epoch = (len(ids) // args.batch) // args.seq
    epochs = -(-args.steps // max(steps_per_epoch, 1))
    t0 = time.perf_counter()
    hist = train.fit(
        net,
        stream_batches(ids, args.batch, args.seq, args.seed),
        "cross_entropy",
        opt,
        epochs=epochs,
        clip_norm=args.clip,
        stateful=True,
        max_steps=args.steps,
        log_every=max(1, steps_per_epoch * 4),
        on_step=schedule,
    )
    seconds = time.perf_counter() - t0
    if best["params"] is not None:
        model.load_state_dict(best["params"])
        print(f"keeping the parameters of step {best['step']} (best held-out loss {best['val']:.3f})")
    final = evaluate(model, ids)
    val = evaluate(model, val_ids) if n_val else float("nan")
    print(
        f"loss: training text {final:.3f}, held-out text {val:.3f} nats/char (unigram entropy {h_uni:.3f}); "
        f"{seconds:.0f} s"
    )
    info = {
        "text": os.path.basename(args.text),
        "cell": args.cell,
        "hidden": args.hidden,
        "steps": len(hist["loss"]),
        "kept_step": best["step"],
        "heldout_loss_nats": round(val, 4),
        "val_fraction": args.val_fraction,
        "batch": args.batch,
        "seq": args.seq,
        "lr": args.lr,
        "clip": args.clip,
        "seed": args.seed,
        "final_loss_nats": round(final, 4),
        "unigram_entropy_nats": round(h_uni, 4),
        "train_seconds": round(seconds, 1),
        "rnnfast": rnnfast.__version__,
    }
    train.save_char_lm(model, vocab, args.out, info)
    print(f"saved {args.out}")
    print("sample:", repr(train.generate("To be, or not", 200, temperature=0.7, seed=1, path=args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
