"""fuse_torch_adam: megatron's torch Adam fallback switched to torch's fused kernel — same update (float
rounding), fused dispatched, anything it cannot take left alone."""

import torch

from megatron_ads.train.optim import fuse_torch_adam


def _params(seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g)) for s in [(64, 33), (7,), (4, 5, 6)]]


def _run(opt, params, steps=10):
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()
    return torch.cat([p.detach().flatten() for p in params])


def test_fused_equals_the_loop_and_is_dispatched():
    ref_p, fused_p = _params(0), _params(0)
    kw = dict(lr=1e-2, betas=(0.9, 0.95), weight_decay=0.01)
    ref = torch.optim.AdamW(ref_p, foreach=False, **kw)
    fused = torch.optim.AdamW(fused_p, **kw)
    assert fuse_torch_adam(fused) and fused.param_groups[0]["fused"] is True
    with torch.profiler.profile() as prof:
        out = _run(fused, fused_p)
    assert any("fused_adamw" in e.key for e in prof.key_averages())
    assert torch.allclose(out, _run(ref, ref_p), rtol=0, atol=1e-6)
    assert not torch.equal(out, torch.cat([p.detach().flatten() for p in _params(0)]))  # it did train


def test_left_alone():
    p = _params(0)
    assert not fuse_torch_adam(torch.optim.SGD(p, lr=0.1))
    assert not fuse_torch_adam(None)
    stepped = torch.optim.Adam(p, lr=0.1)
    _run(stepped, p, steps=1)
    assert not fuse_torch_adam(stepped)  # state exists: the kernel choice is not changed mid-run
    f64 = torch.optim.Adam([torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))], lr=0.1)
    assert fuse_torch_adam(f64)
