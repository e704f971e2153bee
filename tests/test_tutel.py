"""The Tutel backend (napari_moec.families.siren.tutel_backend) against the native MoE path.

Tolerances: float32 throughout. Forward values, the balance loss, kept masks and loads are
bitwise equal here (the same gate, the same experts on the same rows), but we allow 1e-6 so a
different BLAS need not be. Gradients are not bitwise equal: Tutel's C++ kernels sum a gate's
gradient as a sequential dot product where torch uses vectorised reductions, and accumulate
a point's k contributions in another order; measured, they differ by at most 2.2e-7 of each
tensor's largest entry (about 2 float32 ulps), so we require 1e-5 of it, 45 times the measured
gap and still far below any difference a real bug makes (a dropped or misrouted point moves
gradients by percents).

Tests that need Tutel skip with the reason (and the install command) when it does not import;
the ones that check what happens without it simulate the missing import, so they always run.
"""

from __future__ import annotations

import copy
import subprocess
import sys

import numpy as np
import pytest
import torch

import napari_moec as nm
from napari_moec import ArchConfig, Compressor, RunConfig, TrainConfig
from napari_moec.config import ModelConfig
from napari_moec.errors import ConfigError
from napari_moec.events import Progress
from napari_moec.families.siren import tutel_backend
from napari_moec.families.siren.gate import balance_loss
from napari_moec.families.siren.moe import MoESiren, dispatch_slots, expert_capacity
from napari_moec.families.siren.tutel_backend import (
    INSTALL_HINT,
    available_backends,
    resolve_backend,
    tutel_importable,
    use_backend,
)

from .conftest import smooth_volume

needs_tutel = pytest.mark.skipif(
    not tutel_importable(), reason=f"Tutel is not installed ({INSTALL_HINT})"
)
FORWARD_ATOL = 1e-6
GRAD_RTOL_OF_MAX = 1e-5


@pytest.fixture
def no_tutel(monkeypatch):
    """Make every import of Tutel fail, as in an environment without it."""
    for name in ("tutel", "tutel.impls", "tutel.impls.fast_dispatch"):
        monkeypatch.setitem(sys.modules, name, None)


def pair(num_experts: int, top_k: int, hidden: int = 16, seed: int = 0):
    """The same weights twice: native and Tutel."""
    torch.manual_seed(seed)
    native = MoESiren(
        ModelConfig(hidden_features=hidden, num_experts=num_experts, top_k=top_k, gate_hidden=12)
    )
    return native, use_backend(copy.deepcopy(native), "tutel")


def forward_backward(model: MoESiren, coords: torch.Tensor, capacity_factor):
    model.zero_grad(set_to_none=True)
    out = model(coords, capacity_factor)
    (out.value.square().mean() + 0.1 * out.aux_loss).backward()
    return out, {name: p.grad.clone() for name, p in model.named_parameters()}


def drops_any(model: MoESiren, coords: torch.Tensor, capacity_factor) -> bool:
    """Whether any (point, choice) assignment overflows its expert (native rule)."""
    if capacity_factor is None:
        return False
    with torch.no_grad():
        logits = model.gate(model.encoder(coords))
    index = torch.topk(logits, model.config.top_k, dim=-1).indices
    cfg = model.config
    capacity = expert_capacity(capacity_factor, cfg.top_k, coords.shape[0], cfg.num_experts)
    _, keep, _ = dispatch_slots(index, cfg.num_experts, capacity)
    return not bool(keep.all())


# -- without Tutel: always run ------------------------------------------------------------
def test_import_does_not_load_tutel():
    code = (
        "import sys, napari_moec, napari_moec.families.siren.tutel_backend; "
        "print('tutel' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_without_tutel_auto_is_native_and_tutel_is_not_offered(no_tutel):
    assert not tutel_importable()
    assert available_backends() == ("auto", "native")
    assert resolve_backend("auto", "cpu") == "native"
    assert resolve_backend("auto", "cpu", threads=1) == "native"  # Tutel's case, without it
    assert resolve_backend("native", "cpu") == "native"


def test_without_tutel_asking_for_it_says_how_to_install(no_tutel, volume16):
    with pytest.raises(ConfigError, match="pip install --no-build-isolation git\\+https"):
        resolve_backend("tutel", "cpu")
    # Before any training: the Compressor resolves the backend when it is built.
    with pytest.raises(ConfigError, match=tutel_backend.TUTEL_COMMIT):
        Compressor(volume16, 16, arch=ArchConfig(model="siren"), run=RunConfig(backend="tutel"))
    with pytest.raises(ConfigError, match="needs Tutel"):
        nm.compress(volume16, 16, backend="tutel", steps=1, model="siren")


def test_bad_backend_names():
    with pytest.raises(ConfigError, match="backend must be one of"):
        RunConfig(backend="fast")
    with pytest.raises(ConfigError, match="'fast'"):
        resolve_backend("fast", "cpu")
    with pytest.raises(ConfigError, match="'auto'"):
        use_backend(MoESiren(ModelConfig()), "auto")  # resolve first


# -- with Tutel ------------------------------------------------------------------------------
CASES = [
    # (experts, top-k, capacity factor, drops?): None = dropless (decoding). Cf < 1 drops
    # whatever the routing (fewer slots than assignments); Cf = 1.25 drops only if unbalanced.
    (2, 1, 0.9, True),
    (3, 1, 0.75, True),
    (8, 1, 0.5, True),
    (16, 1, 1.25, True),
    (2, 2, 0.9, True),
    (5, 2, 0.8, True),
    (8, 2, 0.5, True),
    (16, 2, 1.25, True),
    (2, 1, 8.0, False),
    (4, 1, None, False),
    (4, 2, None, False),
    (12, 2, None, False),
]


@needs_tutel
@pytest.mark.parametrize(("num_experts", "top_k", "capacity_factor", "drops"), CASES)
def test_forward_balance_loss_and_gradients_match_native(
    num_experts, top_k, capacity_factor, drops
):
    native, tutel = pair(num_experts, top_k)
    coords = torch.rand(1000, 3, generator=torch.Generator().manual_seed(1)) * 2 - 1
    assert drops_any(native, coords, capacity_factor) == drops  # the case tests what it says

    a, grads_a = forward_backward(native, coords, capacity_factor)
    b, grads_b = forward_backward(tutel, coords, capacity_factor)
    torch.testing.assert_close(b.value, a.value, rtol=0, atol=FORWARD_ATOL)
    torch.testing.assert_close(b.aux_loss, a.aux_loss, rtol=1e-6, atol=0)
    assert torch.equal(b.kept, a.kept) and torch.equal(b.load, a.load)
    for name, grad in grads_a.items():
        scale = float(grad.abs().max())
        torch.testing.assert_close(
            grads_b[name], grad, rtol=0, atol=GRAD_RTOL_OF_MAX * scale, msg=name
        )
    assert float(grads_a["gate.net.4.weight"].abs().max()) > 0  # the router learns on both


@needs_tutel
def test_second_choices_queue_behind_all_first_choices():
    """Choice-major priority (GShard), not Tutel's batch-prioritized routing: with 8 points
    and 6 slots per expert, each expert takes all 4 first choices, then the second choices of
    the earliest 2 points, although later points have the higher scores."""
    native, tutel = pair(2, 2)
    features = native.encoder(torch.rand(8, 3) * 2 - 1).detach()
    rising = torch.linspace(1.0, 3.0, 8)
    prefers_1 = torch.arange(8) >= 4  # points 0-3 prefer expert 0, points 4-7 expert 1
    logits = torch.zeros(8, 2)
    logits[~prefers_1, 0] = rising[~prefers_1]
    logits[prefers_1, 1] = rising[prefers_1]
    assert expert_capacity(0.75, 2, 8, 2) == 6
    with torch.no_grad():
        a = native._run(features, 0.75, logits)
        b = tutel._run(features, 0.75, logits)
        full = native._run(features, None, logits)
    torch.testing.assert_close(b.value, a.value, rtol=0, atol=FORWARD_ATOL)
    same = torch.isclose(a.value, full.value, rtol=0, atol=FORWARD_ATOL)[:, 0]
    assert same.tolist() == [True, True, False, False, True, True, False, False]


@needs_tutel
def test_capacity_is_ours_not_tutels_rounding():
    """Tutel alone gives k * floor(Cf * ceil(B / n)) = 10 slots here; we use ceil(Cf k B / n)."""
    from tutel.impls.fast_dispatch import extract_critical

    native, tutel = pair(3, 2)
    coords = torch.rand(10, 3) * 2 - 1
    scores = torch.softmax(native.gate(native.encoder(coords)), dim=-1)
    (_, _, _, _, tutel_capacity, _), _ = extract_critical(scores, 2, capacity_factor=1.25)
    assert tutel_capacity == 10 and expert_capacity(1.25, 2, 10, 3) == 9
    shapes = []
    for model in (native, tutel):
        model.experts.register_forward_hook(lambda m, args, out: shapes.append(args[0].shape))
        model(coords, 1.25)
    assert shapes == [(3, 9, 16), (3, 9, 16)]


@needs_tutel
def test_auto_picks_what_was_measured_faster(volume16):
    """docs/benchmarks/backends.md: Tutel on one CPU thread, native otherwise."""
    assert available_backends() == ("auto", "native", "tutel")
    assert resolve_backend("auto", "cpu", threads=1) == "tutel"
    assert resolve_backend("auto", "cpu", threads=2) == "native"
    assert resolve_backend("auto", "cuda", threads=1) == "native"
    siren = ArchConfig(model="siren")
    one = Compressor(volume16, 16, arch=siren, run=RunConfig(device="cpu", threads=1))
    two = Compressor(volume16, 16, arch=siren, run=RunConfig(device="cpu", threads=2))
    assert (one.backend, two.backend) == ("tutel", "native")


@needs_tutel
def test_a_routed_model_pickles_and_copies_with_its_backend():
    import pickle

    native, tutel = pair(3, 2)
    coords = torch.rand(300, 3) * 2 - 1
    for clone in (copy.deepcopy(tutel), pickle.loads(pickle.dumps(tutel))):
        assert isinstance(clone.mixture, tutel_backend.TutelMixture)
        torch.testing.assert_close(clone(coords, 1.0).value, native(coords, 1.0).value)


@needs_tutel
def test_a_cpu_only_tutel_is_not_used_on_a_gpu():
    if tutel_backend._tutel_has_cuda():
        pytest.skip("this Tutel was built with its CUDA kernels")
    with pytest.raises(ConfigError, match="built without"):
        resolve_backend("tutel", "cuda")
    assert resolve_backend("auto", "cuda") == "native"


@needs_tutel
def test_tutels_own_gshard_loss_is_paper_eq3():
    from tutel.impls.losses import gshard_loss

    scores = torch.softmax(torch.randn(500, 6, generator=torch.Generator().manual_seed(2)), -1)
    top = torch.topk(scores, 2, dim=1).indices
    torch.testing.assert_close(gshard_loss(scores, top), balance_loss(scores, top[:, 0]))


@needs_tutel
@pytest.mark.parametrize(("num_experts", "top_k"), [(3, 1), (6, 2)])
def test_dropless_decode_matches_native(num_experts, top_k):
    native, tutel = pair(num_experts, top_k)
    coords = torch.rand(4000, 3, generator=torch.Generator().manual_seed(3)) * 2 - 1
    values_a, labels_a = native.decode(coords)
    values_b, labels_b = tutel.decode(coords)
    torch.testing.assert_close(values_b, values_a, rtol=0, atol=FORWARD_ATOL)
    assert torch.equal(labels_b, labels_a)


def train_weights(backend: str, volume, train: TrainConfig):
    comp = Compressor(
        volume,
        16,
        arch=ArchConfig(model="siren", num_experts=4, top_k=2),
        train=train,
        run=RunConfig(device="cpu", threads=1, backend=backend),
    )
    gen, gate_at_freeze, last = comp.train(), None, None
    while True:
        try:
            event = next(gen)
        except StopIteration as done:
            model, steps, _ = done.value
            break
        if isinstance(event, Progress) and event.phase == "frozen" and gate_at_freeze is None:
            gate_at_freeze = [p.detach().clone() for p in comp.model.gate_parameters()]
        if isinstance(event, Progress) and event.step == train.steps:
            # The last step's weights, not the best-so-far ones run() keeps: which report was
            # best could flip on a float-rounding tie between the backends.
            last = {k: v.clone() for k, v in comp.model.layout_state().items()}
    return comp, model, steps, gate_at_freeze, last


@needs_tutel
def test_training_end_to_end_through_tutel_matches_native(volume16):
    """Same seed, same schedule: the two backends train the same weights (to float rounding
    grown over 40 Adam steps), the Tutel run really routes through Tutel, and its router stays
    frozen after the freeze point."""
    train = TrainConfig(steps=40, batch_size=1024, freeze_router_at=0.5, capacity_factor=1.0)
    comp, model, steps, gate_at_freeze, last = train_weights("tutel", volume16, train)
    assert comp.backend == "tutel" and isinstance(model.mixture, tutel_backend.TutelMixture)
    assert steps == 40 and gate_at_freeze is not None
    for frozen, final in zip(gate_at_freeze, model.gate_parameters(), strict=True):
        assert torch.equal(frozen, final.detach())
    *_, reference = train_weights("native", volume16, train)
    for name, weight in reference.items():
        scale = float(weight.abs().max())
        torch.testing.assert_close(
            last[name], weight, rtol=0, atol=GRAD_RTOL_OF_MAX * scale, msg=name
        )


@needs_tutel
def test_files_decode_alike_with_either_backend():
    """A file trained with Tutel decodes with native routing and back: the file holds no
    backend. Values agree to float rounding, so a rare voxel may move by one integer level
    (as between any two chunkings, see decode.py); labels are the router's argmax, equal."""
    volume = smooth_volume((12, 16, 20))
    trained = nm.compress(
        volume,
        16,
        steps=30,
        batch_size=1024,
        num_experts=3,
        top_k=2,
        backend="tutel",
        model="siren",
    )
    assert isinstance(trained.model.mixture, tutel_backend.TutelMixture)
    loaded = nm.Compressed.from_bytes(trained.data)  # native unless asked
    assert loaded.model.mixture is None and loaded.header == trained.header
    for roi, stride in ((None, 1), ("2:10,:,5:", 2)):
        native_values, native_labels = loaded.decode_with_labels(roi, stride)
        tutel_values, tutel_labels = (
            nm.Compressed.from_bytes(trained.data)
            .use_backend("tutel")
            .decode_with_labels(roi, stride)
        )
        gap = np.abs(native_values.astype(np.int64) - tutel_values.astype(np.int64))
        assert gap.max() <= 1 and (gap == 0).mean() > 0.999
        np.testing.assert_array_equal(tutel_labels, native_labels)
    fresh = trained.decode()  # decoded by the compressor, through Tutel
    assert np.abs(fresh.astype(np.int64) - loaded.decode().astype(np.int64)).max() <= 1
