"""Optimizers and clipping: vs float64 references (numpy only) and vs torch.optim / clip_grad_norm_."""

import numpy as np
import pytest
from conftest import assert_close

from rnnfast import errors, train
from rnnfast import reference_train as RT


def make_params(rng, shapes=((5, 3), (7,), (2, 2, 2))):
    return [train.Parameter(f"p{i}", rng.standard_normal(s).astype(np.float32)) for i, s in enumerate(shapes)]


def grads_for(rng, params, steps):
    return [[rng.standard_normal(p.shape).astype(np.float32) for p in params] for _ in range(steps)]


SGD_CASES = [
    {"lr": 0.1},
    {"lr": 0.05, "momentum": 0.9},
    {"lr": 0.05, "momentum": 0.9, "dampening": 0.3},
    {"lr": 0.05, "momentum": 0.8, "nesterov": True},
    {"lr": 0.1, "momentum": 0.5, "weight_decay": 0.01},
    {"lr": 0.1, "weight_decay": 0.1, "momentum": 0.9, "nesterov": True},
]
ADAM_CASES = [
    {"lr": 1e-2},
    {"lr": 1e-2, "betas": (0.8, 0.99), "eps": 1e-6},
    {"lr": 1e-2, "weight_decay": 0.1},
    {"lr": 3e-3, "amsgrad": True},
]


@pytest.mark.parametrize("kw", SGD_CASES)
def test_sgd_vs_reference(rng, kw):
    params = make_params(rng)
    ref = [p.data.astype(np.float64) for p in params]
    bufs = [None] * len(params)
    opt = train.SGD(params, **kw)
    for gs in grads_for(rng, params, 5):
        for p, g in zip(params, gs):
            p.grad = g
        opt.step()
        for i, g in enumerate(gs):
            ref[i], bufs[i] = RT.sgd(
                ref[i],
                g,
                bufs[i],
                kw["lr"],
                kw.get("momentum", 0),
                kw.get("dampening", 0),
                kw.get("weight_decay", 0),
                kw.get("nesterov", False),
            )
    for p, r in zip(params, ref):
        assert_close(p.data, r)


@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("kw", ADAM_CASES[:3])
def test_adam_vs_reference(rng, kw, decoupled):
    params = make_params(rng)
    ref = [p.data.astype(np.float64) for p in params]
    ms = [np.zeros(p.shape) for p in params]
    vs = [np.zeros(p.shape) for p in params]
    opt = (train.AdamW if decoupled else train.Adam)(params, **{"weight_decay": 0.0, **kw})
    b1, b2 = kw.get("betas", (0.9, 0.999))
    for step, gs in enumerate(grads_for(rng, params, 6), 1):
        for p, g in zip(params, gs):
            p.grad = g
        opt.step()
        for i, g in enumerate(gs):
            ref[i], ms[i], vs[i] = RT.adam(
                ref[i],
                g,
                ms[i],
                vs[i],
                step,
                kw["lr"],
                b1,
                b2,
                kw.get("eps", 1e-8),
                kw.get("weight_decay", 0.0),
                decoupled,
            )
    for p, r in zip(params, ref):
        assert_close(p.data, r, rtol=1e-5, atol=1e-6)


def test_clip_grad_norm_reference(rng):
    params = make_params(rng)
    gs = [rng.standard_normal(p.shape).astype(np.float32) * 3 for p in params]
    for p, g in zip(params, gs):
        p.grad = g.copy()
    norm = train.clip_grad_norm_(params, 1.5)
    clipped, ref_norm = RT.clip_grad_norm(gs, 1.5)
    assert abs(norm - ref_norm) <= 1e-6 * ref_norm
    for p, c in zip(params, clipped):
        assert_close(p.grad, c)
    # below the threshold nothing changes, the norm is still reported
    norm2 = train.clip_grad_norm_(params, 100.0)
    assert abs(norm2 - 1.5) < 1e-4
    for p, c in zip(params, clipped):
        assert_close(p.grad, c)
    train.clip_grad_value_(params, 0.1)
    for p, c in zip(params, clipped):
        assert_close(p.grad, np.clip(c, -0.1, 0.1))


def test_optimizer_skips_params_without_grad_and_zero_grad(rng):
    params = make_params(rng)
    before = [p.data.copy() for p in params]
    opt = train.Adam(params, lr=0.1)
    params[1].grad = np.ones(params[1].shape, np.float32)
    opt.step()
    assert np.array_equal(params[0].data, before[0]) and not np.array_equal(params[1].data, before[1])
    opt.zero_grad()
    assert all(p.grad is None for p in params)
    with pytest.raises(ValueError):
        train.SGD(params, lr=0.1, nesterov=True)
    with pytest.raises(ValueError):
        train.Adam([], lr=0.1)
    with pytest.raises(errors.DTypeError):
        train.SGD([np.zeros(3)], lr=0.1)


def _torch_params(torch, params):
    return [torch.nn.Parameter(torch.from_numpy(p.data.copy())) for p in params]


@pytest.mark.torch
@pytest.mark.parametrize("kw", SGD_CASES)
def test_sgd_vs_torch(rng, kw):
    torch = pytest.importorskip("torch")
    params = make_params(rng)
    tps = _torch_params(torch, params)
    opt, topt = train.SGD(params, **kw), torch.optim.SGD(tps, **kw)
    for gs in grads_for(rng, params, 6):
        for p, tp, g in zip(params, tps, gs):
            p.grad, tp.grad = g, torch.from_numpy(g.copy())
        opt.step()
        topt.step()
    for p, tp in zip(params, tps):
        assert_close(p.data, tp.detach().numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.torch
@pytest.mark.parametrize("cls", ["Adam", "AdamW"])
@pytest.mark.parametrize("kw", ADAM_CASES)
def test_adam_vs_torch(rng, cls, kw):
    torch = pytest.importorskip("torch")
    params = make_params(rng)
    tps = _torch_params(torch, params)
    opt, topt = getattr(train, cls)(params, **kw), getattr(torch.optim, cls)(tps, **kw)
    for gs in grads_for(rng, params, 8):
        for p, tp, g in zip(params, tps, gs):
            p.grad, tp.grad = g, torch.from_numpy(g.copy())
        opt.step()
        topt.step()
    for p, tp in zip(params, tps):
        assert_close(p.data, tp.detach().numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.torch
@pytest.mark.parametrize("max_norm,norm_type", [(1.0, 2.0), (0.5, float("inf")), (1e3, 2.0), (2.0, 1.0)])
def test_clip_vs_torch(rng, max_norm, norm_type):
    torch = pytest.importorskip("torch")
    params = make_params(rng, ((64, 32), (32,), (10, 3, 3)))
    tps = _torch_params(torch, params)
    for p, tp in zip(params, tps):
        g = rng.standard_normal(p.shape).astype(np.float32)
        p.grad, tp.grad = g, torch.from_numpy(g.copy())
    norm = train.clip_grad_norm_(params, max_norm, norm_type)
    tnorm = float(torch.nn.utils.clip_grad_norm_(tps, max_norm, norm_type))
    assert abs(norm - tnorm) <= 1e-5 * tnorm
    for p, tp in zip(params, tps):
        assert_close(p.grad, tp.grad.numpy(), rtol=1e-5, atol=1e-7)
    torch.nn.utils.clip_grad_value_(tps, 0.05)
    train.clip_grad_value_(params, 0.05)
    for p, tp in zip(params, tps):
        assert np.array_equal(p.grad, tp.grad.numpy())
