import numpy as np
import pytest
import torch

import napari_moec as nm
from napari_moec import ArchConfig, Compressor, PreviewConfig, QuantConfig, TrainConfig
from napari_moec.errors import ConfigError, TrainingError
from napari_moec.events import Finalizing, Preview, Progress, Started
from napari_moec.metrics import psnr

from .conftest import smooth_volume

FAST = TrainConfig(steps=40, batch_size=2048, report_every=5, qat_fraction=0.1)
#: These tests check the SIREN family's training (the default model is the grid family).
SIREN = ArchConfig(model="siren")


def drain(run):
    events = []
    while True:
        try:
            events.append(next(run))
        except StopIteration as done:
            return events, done.value


def test_event_order_and_return_value(volume16):
    comp = Compressor(volume16, 16, arch=SIREN, train=FAST, preview=PreviewConfig(every_steps=15))
    events, result = drain(comp.run())
    assert isinstance(events[0], Started)
    assert isinstance(events[-1], Finalizing)
    progress = [e for e in events if isinstance(e, Progress)]
    assert [e.step for e in progress] == list(range(1, 41))  # a yield per optimiser step
    previews = [e.step for e in events if isinstance(e, Preview)]
    assert previews == [15, 30, 40]  # by steps, whatever the machine's speed, and at the end
    assert isinstance(result, nm.Compressed)
    assert result.report.steps == 40 and not result.report.stopped_early
    assert progress[-1].expert_load.shape == (2,)
    assert progress[-1].phase == "qat"


def test_tight_budget_file_leaves_out_the_training_summary(volume16):
    """At ~170 bytes the summary's ~25 header bytes go to the weights; the report keeps PSNR."""
    tight = nm.compress(volume16, volume16.nbytes / 170, arch=SIREN, train=FAST)
    assert tight.nbytes <= 170 and tight.header.train is None
    assert nm.Compressed.from_bytes(tight.data).header.train is None
    assert tight.report.psnr == pytest.approx(psnr(volume16, tight.decode()), abs=0.01)
    roomy = nm.compress(volume16, 4, arch=SIREN, train=FAST)
    assert roomy.header.train.psnr == roomy.report.psnr


def test_first_layer_w0_follows_the_width_unless_given(volume16):
    from napari_moec.families.siren.sizing import first_layer_w0

    auto = Compressor(volume16, 16, arch=SIREN, train=FAST)
    assert auto.header.model.w0_first == first_layer_w0(auto.header.model.hidden_features)
    fixed = Compressor(volume16, 16, arch=ArchConfig(model="siren", w0_first=17.5), train=FAST)
    assert fixed.header.model.w0_first == 17.5
    result = nm.compress(volume16, 16, arch=SIREN, train=FAST)
    assert result.header.model.w0_first == auto.header.model.w0_first  # stored in the file
    assert result.report.w0_first == auto.header.model.w0_first


def test_experts_default_to_two_and_one_only_when_the_budget_is_tiny(volume16):
    assert Compressor(volume16, 8, arch=SIREN, train=FAST).header.model.num_experts == 2
    tiny = Compressor(volume16, volume16.nbytes / 150, arch=SIREN, train=FAST)
    assert tiny.header.model.num_experts == 1
    # An explicit number is kept, even where it leaves each expert narrow.
    two = Compressor(volume16, volume16.nbytes / 150, arch=ArchConfig(model="siren", num_experts=2))
    assert two.header.model.num_experts == 2


def test_stored_weights_do_not_depend_on_the_clock(volume16):
    """The summary (wall-clock seconds, PSNR) must not move the rate controller's step: the
    same trained network is stored identically whatever the run's duration."""
    comp = Compressor(volume16, 4, arch=SIREN, train=FAST)
    drain(comp.run())
    quick = comp.store(comp.model, 40, 1.0)
    slow = comp.store(comp.model, 40, 98765.4)
    assert quick.header.train.seconds == 1.0 and slow.header.train.seconds == 98765.4
    assert quick.report.quant_multiplier == slow.report.quant_multiplier
    np.testing.assert_array_equal(quick.decode(), slow.decode())
    assert max(quick.nbytes, slow.nbytes) <= comp.budget


def test_loss_drops(volume16):
    train = TrainConfig(steps=150, batch_size=2048, report_every=10)
    events, _ = drain(Compressor(volume16, 8, arch=SIREN, train=train).run())
    losses = [e.loss for e in events if isinstance(e, Progress) and e.step % 10 == 0]
    assert losses[-1] < 0.5 * losses[0]


def test_same_seed_same_file(volume16):
    a = nm.compress(volume16, 16, arch=SIREN, train=FAST)
    b = nm.compress(volume16, 16, arch=SIREN, train=FAST)
    c = nm.compress(volume16, 16, arch=SIREN, train=TrainConfig(steps=40, batch_size=2048, seed=1))
    # The summary holds wall-clock seconds: compare everything else.
    assert a.header.model == b.header.model
    np.testing.assert_array_equal(a.decode(), b.decode())
    assert not np.array_equal(a.decode(), c.decode())


def test_stop_keeps_best_model_and_still_returns(volume16):
    comp = Compressor(volume16, 16, arch=SIREN, train=TrainConfig(steps=10_000, batch_size=1024))
    run = comp.run()
    for event in run:
        if isinstance(event, Progress) and event.step == 30:
            comp.stop()
            break
    events, result = drain(run)
    assert isinstance(events[0], Finalizing) and events[0].stopped
    assert result.report.stopped_early and result.report.steps == 30
    assert result.nbytes <= result.report.budget_bytes


def test_time_limit_ends_training(volume16, monkeypatch):
    """A fake clock that advances 1/8 s per reading (exact in binary): each step's timing reads
    it twice, so a step "takes" 0.125 s and a 1-second limit ends training after exactly 8
    steps, on any machine."""
    import types

    from napari_moec import training

    ticks = iter(range(10**9))
    clock = types.SimpleNamespace(perf_counter=lambda: next(ticks) / 8)
    monkeypatch.setattr(training, "time", clock)
    train = TrainConfig(steps=10**8, time_limit=1.0, batch_size=1024)
    result = nm.compress(volume16, 16, arch=SIREN, train=train)
    assert result.report.steps == 8
    assert result.report.seconds == 1.0


def test_router_freezes(volume16):
    comp = Compressor(
        volume16,
        16,
        arch=SIREN,
        train=TrainConfig(steps=20, batch_size=512, freeze_router_at=0.5),
    )
    phases, snapshot, previous = [], None, None
    for event in comp.run():
        if not isinstance(event, Progress):
            continue
        phases.append(event.phase)
        gate = [p.detach().clone() for p in comp.model.gate.parameters()]
        if event.step == 11:
            snapshot = gate
        elif event.step > 11:
            for before, now in zip(snapshot, gate, strict=True):
                torch.testing.assert_close(before, now, rtol=0, atol=0)
        elif previous is not None:  # before the freeze the router learns
            assert any(not torch.equal(a, b) for a, b in zip(previous, gate, strict=True))
        previous = gate
    assert phases[:10] == ["train"] * 10
    assert set(phases[10:]) <= {"frozen", "qat"}


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32"])
def test_dtype_round_trip(dtype):
    vol = smooth_volume((12, 12, 12), dtype=np.dtype(dtype))
    result = nm.compress(vol, 4, arch=SIREN, train=FAST)
    out = result.decode()
    assert out.dtype == vol.dtype and out.shape == vol.shape
    assert out.min() >= vol.min() and out.max() <= vol.max()


def test_4d_volume(tmp_path):
    vol = smooth_volume((3, 8, 10, 12))
    result = nm.compress(vol, 8, arch=SIREN, train=FAST)
    assert result.header.axes == "TZYX" and result.model.config.in_features == 4
    path = result.save(tmp_path / "v.moec")
    np.testing.assert_array_equal(nm.load(path).decode(), result.decode())


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (np.zeros((8, 8), np.uint16), "3D"),
        (np.zeros((1, 8, 8), np.uint16), "3D"),
        (np.zeros((8, 8, 3), np.uint8), "RGB"),
        (np.zeros((8, 8, 8), np.float64), "dtype"),
        (np.full((8, 8, 8), 7, np.uint16), "constant"),
        (np.where(np.eye(8)[None] > 0, np.nan, 1.0).repeat(8, 0).astype(np.float32), "NaN"),
    ],
)
def test_bad_volumes_raise_clear_errors(array, match):
    with pytest.raises(ConfigError, match=match):
        Compressor(array, 4)


def test_bad_ratio(volume16):
    with pytest.raises(ConfigError, match="ratio"):
        Compressor(volume16, 0.5)
    with pytest.raises(ConfigError, match="highest possible ratio"):
        Compressor(volume16, 10_000)


def test_nan_loss_raises_training_error(volume16, monkeypatch):
    from napari_moec.sampling import Normalization

    def poisoned(self, array):
        return np.full(array.shape, np.nan, np.float32)

    monkeypatch.setattr(Normalization, "apply", poisoned)
    with pytest.raises(TrainingError, match="loss became nan at step 5"):
        nm.compress(volume16, 4, arch=SIREN, train=TrainConfig(steps=50, report_every=5))


def test_float_precisions_meet_budget(volume16):
    for precision in ("fp32", "fp16"):
        r = nm.compress(volume16, 8, arch=SIREN, train=FAST, quant=QuantConfig(precision))
        assert r.nbytes <= r.report.budget_bytes
        assert r.header.quant.precision == precision
