"""The grid family's network and decoding: file bytes decode to the model's rounded forward,
regions equal slices of the whole decode, labels, the dispatch's gradients, CUDA."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_moec.families.grid import model as model_module
from napari_moec.families.grid import routing
from napari_moec.families.grid.config import GridConfig
from napari_moec.families.grid.decode import decode_region, model_from_payload
from napari_moec.families.grid.fit import pack_model, quantize_latents, quantize_weights
from napari_moec.families.grid.interp import axis_matrices, support_box, upsample
from napari_moec.families.grid.model import GridModel, Synthesis
from napari_moec.families.grid.payload import unpack_payload

CASES = [
    ((21, 30, 17), {"num_levels": 4, "num_experts": 3, "top_k": 2}),
    ((3, 9, 14, 11), {"num_levels": 3, "num_experts": 2}),
    ((40, 33, 9), {"kernel": "linear", "context": "none", "num_levels": 4}),
    ((3, 25, 41, 33), {"num_levels": 5, "num_experts": 4}),
    ((1, 7, 5), {"num_levels": 2}),
    ((21, 30, 17), {"num_levels": 3, "first_level": 0, "context": "lin", "num_experts": 2}),
    ((3, 25, 41, 33), {"num_levels": 4, "context": "lin"}),
]


def _random_model(cfg: GridConfig, seed: int = 0) -> GridModel:
    torch.manual_seed(seed)
    model = GridModel(cfg)
    with torch.no_grad():
        for y in model.grids.latents:
            y.copy_(torch.randn(y.shape) * 2 * (torch.rand(y.shape) < 0.4))
        for p in model.synth.parameters():  # a router that really splits the volume
            p.add_(torch.randn(p.shape) * 0.3)
    return model


def _rounded_forward(model: GridModel) -> np.ndarray:
    """The float model with rounded latents and its network at the stored precision."""
    cfg = model.cfg
    q = GridModel(cfg)
    with torch.no_grad():
        for p, ints in zip(q.grids.latents, quantize_latents(model), strict=True):
            p.copy_(torch.from_numpy(ints.astype(np.float32)))
        ints, scales = quantize_weights(model)
        for p, i, s in zip(q.synth.stored().values(), ints, scales, strict=True):
            p.copy_(torch.from_numpy(i.astype(np.float32)) * s)
        from napari_moec.families.grid.decode import region_coords

        region = tuple((0, n, 1) for n in cfg.shape)
        coords = region_coords(cfg.shape, region, "cpu") if q.needs_coords else None
        value, *_ = q(axis_matrices(cfg.shape, cfg.grid_shapes, cfg.kernel), coords, "hard")
    return value.numpy().reshape(cfg.shape)


@pytest.mark.parametrize(("shape", "kw"), CASES)
def test_bytes_decode_to_the_rounded_forward(shape, kw):
    cfg = GridConfig(shape, **kw)
    model = _random_model(cfg)
    decoded = model_from_payload(unpack_payload(pack_model(model), cfg))
    values, labels = decode_region(decoded, values=True, labels=True)
    assert values.shape == shape and values.dtype == np.float32
    np.testing.assert_allclose(values, _rounded_forward(model), atol=1e-5)
    assert labels.shape == shape and labels.dtype == np.uint8
    assert labels.max() < cfg.num_experts
    if cfg.num_experts > 1:
        assert len(np.unique(labels)) > 1  # the random router splits the volume


@pytest.mark.parametrize(("shape", "kw"), CASES)
def test_a_box_reads_only_its_support_box(shape, kw):
    """``support_box``: zeroing every latent outside it leaves the box's decode unchanged to
    the bit (what a tile's payload relies on), and it is no larger than the box needs."""
    cfg = GridConfig(shape, **kw)
    rng = np.random.default_rng(len(shape) + sum(shape))
    for _ in range(3):
        box = []
        for n in shape:
            a = int(rng.integers(0, n))
            box.append((a, int(rng.integers(a + 1, n + 1))))
        model = _random_model(cfg)
        full, _ = decode_region(model, box)
        with torch.no_grad():
            for y, g in zip(model.grids.latents, cfg.grid_shapes, strict=True):
                keep = support_box(shape, g, cfg.kernel, box)
                kept = y[keep].clone()
                assert all(s.stop - s.start <= n for s, n in zip(keep, g, strict=True))
                y.zero_()
                y[keep] = kept
        only, _ = decode_region(model, box)
        np.testing.assert_array_equal(only, full)
    # one voxel of a fine level reads at most the kernel's taps per axis
    cfg = GridConfig((64, 64, 64), first_level=1, num_levels=2)
    keep = support_box(cfg.shape, cfg.grid_shapes[0], cfg.kernel, ((30, 31),) * 3)
    assert all(1 <= s.stop - s.start <= 4 for s in keep)


@pytest.mark.parametrize(("shape", "kw"), CASES)
def test_region_equals_slice_of_full_decode(shape, kw):
    cfg = GridConfig(shape, **kw)
    model = model_from_payload(unpack_payload(pack_model(_random_model(cfg)), cfg))
    full, full_labels = decode_region(model, labels=True)
    roi = tuple((1, n) if n > 2 else (0, n) for n in shape)
    stride = tuple(2 if n > 3 else 1 for n in shape)
    part, part_labels = decode_region(model, roi, stride, labels=True, chunk_voxels=97)
    sl = tuple(slice(a, b, s) for (a, b), s in zip(roi, stride, strict=True))
    np.testing.assert_allclose(part, full[sl], atol=1e-5)
    assert np.array_equal(part_labels, full_labels[sl])
    only, _ = decode_region(model, chunk_voxels=max(1, full.size // 13))  # more blocks
    np.testing.assert_allclose(only, full, atol=1e-5)
    _, labels_only = decode_region(model, roi, stride, values=False, labels=True)
    assert np.array_equal(labels_only, full_labels[sl])


@pytest.mark.parametrize(("shape", "kw"), [((80, 96, 72), {}), ((4, 40, 60, 56), {"top_k": 1})])
def test_blocks_shared_among_worker_threads_decode_as_one_thread_does(shape, kw, monkeypatch):
    """A region of >= 2 default blocks on a CPU with 2 torch threads is decoded a block a
    worker thread (decode.PARALLEL_CHUNK_VOXELS): every block lands where the one-thread
    decode puts it, the labels exactly, and the caller's thread count is unchanged."""
    from napari_moec.families.grid import decode as decode_module

    cfg = GridConfig(shape, num_levels=4, num_experts=3, **{"top_k": 2, **kw})
    model = model_from_payload(unpack_payload(pack_model(_random_model(cfg)), cfg))
    assert np.prod(shape) >= 2 * decode_module.CHUNK_VOXELS["cpu"]  # the pooled path
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one, one_labels = decode_region(model, labels=True)
        torch.set_num_threads(2)
        calls = []
        real = decode_module._in_workers
        monkeypatch.setattr(decode_module, "_in_workers", lambda *a: (calls.append(a[2]), real(*a)))
        pooled, pooled_labels = decode_region(model, labels=True)
        assert calls == [2]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    np.testing.assert_allclose(pooled, one, atol=1e-5)
    assert np.array_equal(pooled_labels, one_labels)
    assert len(np.unique(one_labels)) > 1  # the router splits: the labels say something


def test_a_worker_threads_error_reaches_the_caller(monkeypatch):

    cfg = GridConfig((80, 96, 72), num_levels=3, num_experts=2)
    model = model_from_payload(unpack_payload(pack_model(_random_model(cfg)), cfg))

    def broken(*_):
        raise RuntimeError("expert exploded")

    monkeypatch.setattr(model.synth, "infer", broken)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with pytest.raises(RuntimeError, match="expert exploded"):
            decode_region(model)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("shape", [(9, 6, 5), (3, 7, 4, 6)])
def test_node_index_selectors_equal_the_identitys_rows_to_the_bit(shape):
    """A grid axis as fine as the voxels is gathered by node index (interp.Selector): the
    values and the latents' gradients equal the product with the identity's rows exactly."""
    cfg = GridConfig(shape, num_levels=2, first_level=0)
    region = tuple((1, n, 2) for n in shape)
    selectors = axis_matrices(shape, cfg.grid_shapes, cfg.kernel, region)
    assert all(m.dtype == torch.int64 for m in selectors[0])  # the lattice level: gathers
    assert all(m.dtype == torch.float32 for m in selectors[1])  # coarser: products
    products = [
        [torch.eye(n)[m] if m.dtype == torch.int64 else m for m, n in zip(lvl, shape, strict=True)]
        for lvl in selectors
    ]
    outs, grads = [], []
    for mats in (selectors, products):
        torch.manual_seed(0)
        grids = [torch.randn(g, requires_grad=True) for g in cfg.grid_shapes]
        out = torch.stack([upsample(g, m).reshape(-1) for g, m in zip(grids, mats, strict=True)])
        weight = torch.randn(out.shape)
        (out * weight).sum().backward()
        outs.append(out.detach())
        grads.append([g.grad for g in grids])
    assert torch.equal(outs[0], outs[1])
    for a, b in zip(*grads, strict=True):
        assert torch.equal(a, b)
    assert outs[0].shape[1] == np.prod([len(range(*r)) for r in region])


@pytest.mark.parametrize("top_k", [1, 2])
def test_dispatch_gradients_equal_plain_autograd(top_k, monkeypatch):
    cfg = GridConfig((5, 6, 7), num_levels=4, hidden=8, num_experts=3, top_k=top_k)
    torch.manual_seed(0)
    synth = Synthesis(cfg)
    f, coords = torch.randn(4, 200), torch.randn(200, 3)  # features are (L, B)
    grads = []
    for plain in (False, True):
        if plain:
            monkeypatch.setattr(
                model_module._GatherColumns,
                "apply",
                lambda src, idx, inv: src.index_select(1, idx),
            )
        x = f.clone().requires_grad_(True)
        value, aux, load, _ = synth(x, coords)
        (value.square().sum() + aux).backward()
        grads.append(x.grad.clone())
        assert torch.isclose(load.sum(), torch.tensor(1.0))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("experts", "top_k"), [(1, 1), (3, 1), (4, 2), (3, 3), (4, 3), (8, 2)])
def test_the_decoders_masked_dispatch_gives_the_training_paths_values(experts, top_k):
    """``Synthesis.infer`` (decoding: a mask per expert, no sort) returns the values and top-1
    experts of ``forward`` (training: the assignments grouped by expert) to the last bit,
    top-k blends included: both take their gate weights from ``_route``."""
    cfg = GridConfig((5, 6, 7), num_levels=4, hidden=8, num_experts=experts, top_k=top_k)
    synth = Synthesis(cfg, torch.Generator().manual_seed(3)).eval()
    with torch.no_grad():
        for p in synth.parameters():  # a decisive router: every expert gets voxels
            p.mul_(4.0)
    f, coords = torch.randn(4, 5000), torch.rand(5000, 3) * 2 - 1
    with torch.no_grad():
        value, _, load, top1 = synth(f, coords)
    got, labels = synth.infer(f, coords)
    assert torch.equal(labels, top1)
    if experts > 1:
        assert (load > 0).all()
    assert torch.equal(got, value)


@pytest.mark.parametrize(("experts", "top_k"), [(2, 2), (3, 2), (4, 2), (4, 3), (8, 2), (5, 5)])
def test_top_k_routing_picks_the_largest_logits_lower_expert_first_on_ties(experts, top_k):
    """``top_k_rows`` (elementwise passes, no ``torch.topk``) picks what a stable descending
    sort of each voxel's logits picks; rounded logits make ties on purpose."""
    gen = torch.Generator().manual_seed(experts * 10 + top_k)
    rows = torch.round(torch.randn(experts, 4000, generator=gen) * 2) / 2  # many exact ties
    expected = torch.sort(rows, dim=0, descending=True, stable=True).indices[:top_k]
    assert torch.equal(routing.top_k_rows(rows, top_k), expected)


def test_top_k_gate_weights_are_the_chosen_probabilities_normalised():
    """The top-k weights (a softmax over the chosen logits) and their gradients are those of
    the textbook form: the softmax over every expert, the top-k probabilities renormalised."""
    cfg = GridConfig((5, 6, 7), num_levels=4, hidden=8, num_experts=5, top_k=3)
    synth = Synthesis(cfg, torch.Generator().manual_seed(1))
    rows = (torch.randn(5, 3000) * 3).requires_grad_(True)
    probs, weight, index = synth._route(rows)
    textbook = torch.softmax(rows, dim=0)
    chosen = textbook.gather(0, index)
    torch.testing.assert_close(probs, textbook)
    torch.testing.assert_close(weight, chosen / chosen.sum(dim=0, keepdim=True))
    cotangent = torch.randn(3, 3000)
    (got,) = torch.autograd.grad((weight * cotangent).sum(), rows)
    (want,) = torch.autograd.grad(
        ((chosen / chosen.sum(dim=0, keepdim=True)) * cotangent).sum(), rows
    )
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert synth._route(rows.detach(), probabilities=False)[0] is None


def test_top_k_weights_sum_to_one_and_one_expert_is_plain():
    cfg = GridConfig((4, 5, 6), num_levels=2, hidden=4)
    model = _random_model(cfg)
    _, labels = decode_region(model, values=False, labels=True)
    assert labels.dtype == np.uint8 and not labels.any()
    assert model.synth.gate is None


@pytest.mark.cuda
def test_cuda_decode_matches_cpu_and_trains():
    from napari_moec.families.grid.train import GridTrainer, TrainSettings

    shape = (20, 24, 28)
    cfg = GridConfig(shape, num_levels=3, num_experts=2, hidden=8)
    rng = np.random.default_rng(0)
    target = np.tanh(rng.normal(size=shape).cumsum(0).cumsum(1) / 20).astype(np.float32)
    trainer = GridTrainer(
        target, cfg, 1500, TrainSettings(steps=60, checkpoint_every=30), device="cuda"
    )
    first = trainer.step().mse
    from napari_moec.generators import drain

    best = drain(trainer.run())
    assert len(best.payload) <= 1500 and -best.score < first
    payload = unpack_payload(best.payload, cfg)
    cpu, cpu_labels = decode_region(model_from_payload(payload, "cpu"), labels=True)
    gpu, gpu_labels = decode_region(model_from_payload(payload, "cuda"), labels=True)
    np.testing.assert_allclose(gpu, cpu, atol=1e-4)
    assert (gpu_labels == cpu_labels).mean() > 0.999
