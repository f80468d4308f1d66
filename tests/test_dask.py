"""rnnfast.dask: models shipped as native bytes, batch inference on a LocalCluster (127.0.0.1 only).

In-process tests compare the length-batched partition scoring against the plain model run on the whole
batch (float32 rounding may differ with the batch composition, hence assert_close). Cluster tests compare
the cluster's result bit for bit with the same collection computed by the synchronous scheduler in this
process (same partitions -> same batches -> same bits), and with the plain model run.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import signal
import time

import numpy as np
import pytest
from conftest import assert_close

import rnnfast
import rnnfast.dask as rd
from rnnfast import errors

distributed = pytest.importorskip("distributed")
dask = pytest.importorskip("dask")
da = pytest.importorskip("dask.array")
db = pytest.importorskip("dask.bag")


# --------------------------------------------------------------------------------------------------
# models and data
# --------------------------------------------------------------------------------------------------
def classifier(seed: int = 0, V: int = 40) -> rnnfast.Sequential:
    return rnnfast.Sequential(
        {
            "emb": rnnfast.Embedding(V, 8, seed=seed),
            "rnn": rnnfast.LSTM(8, 16, batch_first=True, bidirectional=True, seed=seed + 1),
            "fc": rnnfast.Linear(32, 3, seed=seed + 2),
            "out": rnnfast.Softmax(),
        },
        many_to_one=True,
    )


def tokens_and_lengths(rng, N: int, T: int, V: int = 40):
    x = rng.integers(0, V, (N, T))
    L = rng.integers(0, T + 1, N)  # unsorted, with zeros and full lengths
    L[:3] = [T, 0, 1]
    return x, L


def run_plain(model, x_bf: np.ndarray, L, output: str):
    """The plain model on the whole batch: the independent expectation (batch-first in and out)."""
    if isinstance(model, rnnfast.Sequential):
        y = model(x_bf, lengths=L)
        return y
    xin = x_bf if model.batch_first else np.ascontiguousarray(x_bf.transpose(1, 0, 2))
    out, state = model(xin, lengths=L)
    h_n = state[0] if isinstance(state, tuple) else state
    if output == "last":
        D = 2 if model.bidirectional else 1
        return np.concatenate(list(h_n[-D:]), axis=-1)
    return out if model.batch_first else out.transpose(1, 0, 2)


# --------------------------------------------------------------------------------------------------
# the handle: native bytes + hash, nothing else
# --------------------------------------------------------------------------------------------------
def test_handle_pickles_as_native_bytes_and_hash(rng, tmp_path):
    model = classifier(seed=3)
    h = rd.ModelHandle(model)
    fn, args = h.__reduce__()
    assert fn is rd._rebuild_handle
    data, digest = args
    assert isinstance(data, bytes) and isinstance(digest, str) and len(digest) == 64
    # the bytes are exactly what rnnfast.save writes
    rnnfast.save(model, tmp_path / "m.safetensors")
    assert data == (tmp_path / "m.safetensors").read_bytes()
    assert hashlib.sha256(data).hexdigest() == digest
    back = pickle.loads(pickle.dumps(h))
    assert back.digest == h.digest and back.nbytes == h.nbytes
    x, L = tokens_and_lengths(rng, 9, 7)
    np.testing.assert_array_equal(back.get()(x, lengths=L), model(x, lengths=L))  # exact round trip


def test_handle_rejects_tampering():
    h = rd.ModelHandle(rnnfast.GRU(3, 4, seed=0))
    data, digest = h.__reduce__()[1]
    tampered = bytearray(data)
    tampered[-1] ^= 0xFF
    bad = rd._rebuild_handle(bytes(tampered), digest)
    with pytest.raises(errors.FormatError, match="sha256"):
        bad.get()
    with pytest.raises(errors.FormatError):
        rd._rebuild_handle(data, "not-a-digest")
    with pytest.raises(errors.FormatError):
        rd._rebuild_handle("text", digest)
    with pytest.raises(errors.FormatError):  # hostile bytes with a matching hash: rnnfast.load's checks
        rd.ModelHandle(b"\xff" * 32).get()
    with pytest.raises(errors.UnsupportedError, match="config"):
        rd.ModelHandle(object())


def test_cache_loads_once_per_process():
    h = rd.ModelHandle(rnnfast.RNN(3, 5, seed=11))
    clone = pickle.loads(pickle.dumps(h))
    before = rd.cache_info()["loads"].get(h.digest, 0)
    m1, m2 = h.get(), clone.get()
    assert m1 is m2
    assert rd.cache_info()["loads"][h.digest] == max(before, 1)


# --------------------------------------------------------------------------------------------------
# one partition, in process: batching by length, order restored
# --------------------------------------------------------------------------------------------------
def _models():
    return {
        "lstm_bidir_time_major": rnnfast.LSTM(5, 7, bidirectional=True, seed=1),
        "gru_2layer_batch_first": rnnfast.GRU(5, 6, num_layers=2, batch_first=True, seed=2),
        "rnn_relu": rnnfast.RNN(5, 4, nonlinearity="relu", seed=3),
        "reversed": rnnfast.Reversed(rnnfast.GRU(5, 6, seed=4)),
    }


@pytest.mark.parametrize("name", list(_models()))
@pytest.mark.parametrize("output", ["last", "sequence"])
def test_predict_padded_matches_plain_model(name, output, rng):
    model = _models()[name]
    N, T = 37, 9
    x = rng.standard_normal((N, T, 5)).astype(np.float32)
    _, L = tokens_and_lengths(rng, N, T)
    got = rd.predict_padded(model, x, L, output=output, batch_size=5)
    if name == "reversed":
        out, h_n = model(np.ascontiguousarray(x.transpose(1, 0, 2)), lengths=L)
        want = h_n[-1] if output == "last" else out.transpose(1, 0, 2)
    else:
        want = run_plain(model, x, L, output)
    if output == "sequence":
        valid = np.arange(T)[None, :] < L[:, None]
        assert np.all(got[~valid] == 0)
    assert_close(got, want, what=f"{name} {output}")


def test_predict_padded_sequential_per_step_and_last(rng):
    # per-step Sequential with a Linear after the LSTM: the Linear's bias makes padded steps non-zero in the
    # plain run; predict_padded defines them as 0 and picks the last *valid* step for output="last"
    model = rnnfast.Sequential(
        rnnfast.Embedding(40, 6, seed=0), rnnfast.GRU(6, 8, seed=1), rnnfast.Linear(8, 2, seed=2)
    )
    N, T = 23, 8
    x, L = tokens_and_lengths(rng, N, T)
    plain = model(x.T, lengths=L).transpose(1, 0, 2)  # time-major model: tokens (T, B)
    seq = rd.predict_padded(model, x, L, output="sequence", batch_size=4)
    valid = np.arange(T)[None, :] < L[:, None]
    assert_close(seq[valid], plain[valid], what="valid steps")
    assert np.all(seq[~valid] == 0)
    last = rd.predict_padded(model, x, L, output="last", batch_size=4)
    want = np.where((L > 0)[:, None], plain[np.arange(N), np.maximum(L - 1, 0)], 0)
    assert_close(last, want, what="last valid step")
    with pytest.raises(errors.UnsupportedError, match="many_to_one"):
        rd.predict_padded(classifier(), x, L, output="sequence")


def test_predict_sequences_order_and_trimming(rng):
    model = rnnfast.LSTM(4, 6, batch_first=True, seed=5)
    lens = rng.permutation(np.r_[0, 1, np.arange(2, 30)])
    seqs = [rng.standard_normal((n, 4)).astype(np.float32) for n in lens]
    outs = rd.predict_sequences(model, seqs, output="sequence", batch_size=4)
    lasts = rd.predict_sequences(model, seqs, output="last", batch_size=4)
    assert len(outs) == len(seqs) == len(lasts)
    for i, s in enumerate(seqs):  # each one alone, as its own batch of one
        out, (h_n, _) = model(s[None] if len(s) else np.zeros((1, 1, 4), np.float32), lengths=[len(s)])
        assert outs[i].shape == (len(s), 6)
        assert_close(outs[i], out[0, : len(s)], what=f"sequence {i}")
        assert_close(lasts[i], h_n[-1, 0], what=f"last {i}")


def test_predict_sequences_tokens_with_a_decoder(rng):
    seq2seq = pytest.importorskip("rnnfast.seq2seq")
    V, E, H = 12, 5, 8
    model = seq2seq.Seq2Seq(
        rnnfast.GRU(E, H, batch_first=True, seed=0),
        rnnfast.GRU(E, H, seed=1),
        rng.standard_normal((V, E)).astype(np.float32),
        rng.standard_normal((V, H)).astype(np.float32),
        src_embedding=rng.standard_normal((V, E)).astype(np.float32),
    )
    lens = rng.integers(1, 9, 17)
    seqs = [rng.integers(0, V, n) for n in lens]
    kw = {"max_len": 6, "start_token": 1, "end_token": 2}
    got = rd.predict_sequences(model, seqs, output="tokens", batch_size=4, decode_kwargs=kw)
    for i, s in enumerate(seqs):
        r = model.greedy(s[None], [len(s)], **kw)
        np.testing.assert_array_equal(got[i], r.tokens[0, : r.lengths[0]])
    padded = np.zeros((len(seqs), lens.max()), np.int64)
    for i, s in enumerate(seqs):
        padded[i, : len(s)] = s
    arr = rd.predict_padded(model, padded, lens, output="tokens", batch_size=4, decode_kwargs=kw)
    assert arr.shape == (len(seqs), 6)
    for i in range(len(seqs)):
        np.testing.assert_array_equal(arr[i, : len(got[i])], got[i])
        assert np.all(arr[i, len(got[i]) :] == -1)


def test_bad_arguments(rng):
    model = rnnfast.GRU(3, 4, batch_first=True, seed=0)
    x = rng.standard_normal((6, 5, 3)).astype(np.float32)
    with pytest.raises(errors.ShapeError, match="output"):
        rd.predict_padded(model, x, output="hidden")
    with pytest.raises(errors.ShapeError, match="batch_size"):
        rd.predict_padded(model, x, batch_size=0)
    with pytest.raises(errors.ShapeError, match="lengths"):
        rd.predict_padded(model, x, lengths=[1, 2])
    with pytest.raises(errors.ShapeError, match=r"lengths\[0\]"):
        rd.predict_padded(model, x, lengths=[6, 1, 1, 1, 1, 1])
    with pytest.raises(errors.UnsupportedError, match="tokens"):
        rd.predict_padded(model, x, output="tokens")
    with pytest.raises(errors.ShapeError, match="trailing shape"):
        rd.predict_sequences(model, [x[0], x[1, :, :2]])
    with pytest.raises(errors.UnsupportedError, match="dask array, bag"):
        rd.predict(model, x)
    with pytest.raises(errors.ShapeError, match="lengths"):
        rd.predict(model, db.from_sequence(list(x)), lengths=[5] * 6)
    with pytest.raises(errors.ShapeError, match="threads_per_worker"):
        rd.predict(model, da.from_array(x), threads_per_worker=0)
    with pytest.raises(errors.ShapeError, match="lengths"):
        rd.predict(model, da.from_array(x, chunks=2), lengths=np.ones(5, int))


# --------------------------------------------------------------------------------------------------
# on a LocalCluster: 2 worker processes x 1 thread, loopback only
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(
        host="127.0.0.1",
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address="127.0.0.1:0",
        silence_logs=50,
    )
    c = distributed.Client(cluster)
    try:
        c.wait_for_workers(2, timeout=30)
        yield c
    finally:
        c.close()
        cluster.close()


def test_cluster_array_identical_to_single_process(client, rng):
    model = classifier(seed=20)
    N, T = 600, 14
    x, L = tokens_and_lengths(rng, N, T)
    y = rd.predict(model, da.from_array(x, chunks=70), da.from_array(L, chunks=100), batch_size=16)
    assert y.shape == (N, 3) and y.chunks[0] == da.from_array(x, chunks=70).chunks[0]
    got = y.compute()
    np.testing.assert_array_equal(got, y.compute(scheduler="sync"))  # bit-identical, in order
    assert_close(got, model(x, lengths=L), what="vs the plain model")  # and the right rows
    # per-step outputs of a bare layer, numpy lengths, features input
    gru = rnnfast.GRU(4, 6, bidirectional=True, seed=21)
    xf = rng.standard_normal((N, T, 4)).astype(np.float32)
    ys = rd.predict(gru, da.from_array(xf, chunks=(90, 7, 4)), L, output="sequence", batch_size=32)
    got = ys.compute()
    assert got.shape == (N, T, 12)
    np.testing.assert_array_equal(got, ys.compute(scheduler="sync"))
    assert_close(got, run_plain(gru, xf, L, "sequence"), what="gru sequence")


def test_cluster_bag_and_dataframe_keep_input_order(client, rng):
    model = classifier(seed=30)
    N = 500
    lens = rng.integers(0, 25, N)
    seqs = [rng.integers(0, 40, n) for n in lens]
    bag = db.from_sequence(seqs, npartitions=7)
    res = rd.predict(model, bag, batch_size=16)
    got = res.compute()
    assert len(got) == N
    want_sync = res.compute(scheduler="sync")
    for i in range(N):
        np.testing.assert_array_equal(got[i], want_sync[i])
    padded = np.zeros((N, lens.max()), np.int64)
    for i, s in enumerate(seqs):
        padded[i, : len(s)] = s
    assert_close(np.stack(got), model(padded, lengths=lens), what="bag vs plain")

    dd = pytest.importorskip("dask.dataframe")
    pd = pytest.importorskip("pandas")
    with dask.config.set({"dataframe.convert-string": False}):
        frame = dd.from_pandas(
            pd.DataFrame({"seq": pd.Series(seqs, dtype=object), "id": np.arange(N) * 10}), npartitions=6
        )
    scores = rd.predict(model, frame, column="seq", batch_size=16).compute()
    assert list(scores.columns) == ["out_0", "out_1", "out_2"]
    np.testing.assert_array_equal(scores.index.to_numpy(), np.arange(N))
    assert_close(scores.to_numpy(), np.stack(got), what="dataframe vs bag")
    per_step = rd.predict(
        rnnfast.LSTM(1, 3, batch_first=True, seed=31),
        frame["seq"].map(lambda s: np.asarray(s, np.float32)[:, None], meta=("seq", object)),
        output="sequence",
    ).compute()
    assert [len(v) for v in per_step] == list(lens)


def test_cluster_decodes_seq2seq_tokens_in_input_order(client, rng):
    """A Seq2Seq ships to the workers in the native format and decodes the same tokens there."""
    seq2seq = pytest.importorskip("rnnfast.seq2seq")
    V, E, H = 12, 5, 8
    model = seq2seq.Seq2Seq(
        rnnfast.GRU(E, H, batch_first=True, seed=0),
        rnnfast.GRU(E + H, H, seed=1),
        rng.standard_normal((V, E)).astype(np.float32),
        rng.standard_normal((V, H)).astype(np.float32),
        attention=rnnfast.DotAttention(),
        src_embedding=rng.standard_normal((V, E)).astype(np.float32),
    )
    seqs = [rng.integers(0, V, n) for n in rng.integers(1, 9, 23)]
    kw = {"max_len": 6, "start_token": 1, "end_token": 2}
    got = rd.predict(model, db.from_sequence(seqs, npartitions=4), output="tokens", decode_kwargs=kw,
                     batch_size=4).compute()
    assert len(got) == len(seqs)
    for i, s in enumerate(seqs):
        r = model.greedy(s[None], [len(s)], **kw)
        np.testing.assert_array_equal(got[i], r.tokens[0, : r.lengths[0]])


def test_model_loaded_once_per_worker_and_threads(client, rng):
    model = rnnfast.GRU(6, 10, batch_first=True, seed=40)  # a model no other test ships
    digest = rd.ModelHandle(model).digest
    N, T, parts = 480, 10, 16
    x = rng.standard_normal((N, T, 6)).astype(np.float32)
    xd = da.from_array(x, chunks=N // parts)
    first = rd.predict(model, xd, output="last").compute()
    second = rd.predict(model, xd, output="last").compute()  # a second job: the cache is reused
    np.testing.assert_array_equal(first, second)
    info = client.run(rd.cache_info)
    tasks = {w: i["tasks"].get(digest, 0) for w, i in info.items()}
    loads = {w: i["loads"].get(digest, 0) for w, i in info.items()}
    assert sum(tasks.values()) == 2 * parts  # every partition scored once per job
    assert all(loads[w] == 1 for w in info if tasks[w] > 0), (loads, tasks)
    assert all(loads[w] == 0 for w in info if tasks[w] == 0), (loads, tasks)
    assert sum(tasks.values()) > sum(loads.values())  # tasks reused the loaded model
    # 2 workers x 1 dask thread on this host: rnnfast threads = cores // 2 each
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    for w, i in info.items():
        if tasks[w]:
            assert i["num_threads"] == max(1, cores // 2), (w, i)


def test_scattered_model(client, rng):
    model = rnnfast.RNN(5, 7, bidirectional=True, batch_first=True, seed=60)
    digest = rd.ModelHandle(model).digest
    x = rng.standard_normal((90, 6, 5)).astype(np.float32)
    y = rd.predict(model, da.from_array(x, chunks=10), output="sequence", scatter=True)
    # the handle was broadcast to every worker before the job
    held = client.has_what()
    assert len(held) == 2 and all(any(str(k).startswith("ModelHandle-") for k in ks) for ks in held.values())
    got = y.compute()
    assert_close(got, run_plain(model, x, None, "sequence"), what="scattered model")
    info = client.run(rd.cache_info)
    assert all(i["loads"].get(digest, 0) == (1 if i["tasks"].get(digest, 0) else 0) for i in info.values())
    assert sum(i["tasks"].get(digest, 0) for i in info.values()) == 9


def test_worker_killed_mid_job_loses_and_duplicates_nothing(client):
    """SIGKILL one worker process while it is running tasks: the nanny restarts it, the scheduler
    reruns its lost tasks, and the result is complete and bit-identical (runs last: it restarts a
    worker of the module's cluster)."""
    model = rnnfast.LSTM(32, 96, num_layers=2, batch_first=True, seed=50)
    N, T, parts = 6000, 50, 40
    rs = da.random.RandomState(7)
    x = rs.standard_normal((N, T, 32), chunks=(N // parts, T, 32)).astype(np.float32)
    L = rs.randint(1, T + 1, size=N, chunks=N // parts)
    # the data lives on the workers: the job's tasks are the partitions to score (the killed worker's
    # blocks of x and L are regenerated from the graph)
    x, L = client.persist([x, L])
    distributed.wait([x, L], timeout=120)
    y = rd.predict(model, x, L, output="last", batch_size=64)
    keys = {d.key for d in y.to_delayed().ravel()}
    pids = client.run(os.getpid)
    fut = client.compute(y.to_delayed().ravel().tolist())
    # a first partition is finished: the job is under way
    distributed.wait(fut, timeout=120, return_when="FIRST_COMPLETED")
    processing = {w: set(ks) & keys for w, ks in client.processing().items()}
    victim = max(processing, key=lambda w: len(processing[w]))
    assert processing[victim], "expected the victim to be scoring partitions"
    os.kill(pids[victim], signal.SIGKILL)
    distributed.wait(fut, timeout=120)
    got = np.concatenate(client.gather(fut))
    # nothing lost, nothing duplicated, order kept: bit-identical to the same partitions in this process
    xs, Ls = (np.asarray(a) for a in client.gather(client.compute([x, L])))
    step = N // parts
    want = np.concatenate(
        [
            rd.predict_padded(model, xs[i : i + step], Ls[i : i + step], batch_size=64)
            for i in range(0, N, step)
        ]
    )
    assert got.shape == want.shape == (N, 96)
    np.testing.assert_array_equal(got, want)
    # the scheduler saw the victim's partitions die with it, and ran them again (the result is complete)
    lost = sorted(processing[victim])

    def suspicious(dask_scheduler, lost=lost):
        return [dask_scheduler.tasks[k].suspicious for k in lost if k in dask_scheduler.tasks]

    counts = client.run_on_scheduler(suspicious)
    print(f"killed {victim} (pid {pids[victim]}) while it held {len(lost)} partition(s); suspicious {counts}")
    assert counts and max(counts) >= 1
    # a new worker process replaced the killed one
    deadline = time.time() + 30
    while time.time() < deadline:
        now = client.run(os.getpid)
        if len(now) == 2 and pids[victim] not in now.values():
            break
        time.sleep(0.2)
    assert pids[victim] not in client.run(os.getpid).values()
