"""Keeping the best file of a grid run (issue 22): checkpoints are real payloads scored on a
fixed sample of voxels; the final choice keeps the exact fit of the last weights or the best
checkpoint, whichever decodes better over the whole volume, in the trainer and in the store
(the same measure); checkpoints cost a sample, not the volume, and do not steer training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_moec.config import RunConfig, TrainConfig
from napari_moec.families.grid import train as grid_train
from napari_moec.families.grid.fit import fit_budget, fit_candidates
from napari_moec.families.grid.sizing import auto_config
from napari_moec.families.grid.train import CHECKPOINT_VOXELS, GridTrainer, TrainSettings
from napari_moec.generators import drain
from napari_moec.sampling import Normalization
from napari_moec.training import Compressor

RUN = RunConfig(device="cpu", threads=1)


def _trainer(hipct, steps: int, every: int = 10**6) -> GridTrainer:
    limit = hipct.nbytes // 256 - 60
    cfg = auto_config(hipct.shape, limit)
    settings = TrainSettings(steps=steps, checkpoint_every=every)
    return GridTrainer(Normalization.of(hipct).apply(hipct), cfg, limit, settings)


def _ruin(model) -> None:
    """Force the last weights worse than any checkpoint: every latent set to zero."""
    with torch.no_grad():
        for y in model.grids.latents:
            y.zero_()


def test_final_worse_than_a_checkpoint_keeps_the_checkpoint(one_thread, hipct):
    trainer = _trainer(hipct, 60)
    for _ in range(60):
        trainer.advance()
    checkpoint = trainer.checkpoint()
    assert trainer.model.best_payload == checkpoint.payload
    _ruin(trainer.model)
    last = fit_budget(trainer.model, trainer.limit, trainer.score)
    kept = trainer.final()
    assert kept.payload == checkpoint.payload
    assert kept.score == trainer.score(checkpoint.payload) > last.score  # on the whole volume
    assert trainer.history[-1]["measure"] == "volume"


def test_final_better_than_the_checkpoints_keeps_the_final_fit(one_thread, hipct):
    trainer = _trainer(hipct, 60)
    for _ in range(3):
        trainer.advance()
    early = trainer.checkpoint()
    for _ in range(57):
        trainer.advance()
    kept = trainer.final()
    assert kept.payload != early.payload
    assert kept.payload == fit_budget(trainer.model, trainer.limit, trainer.score).payload
    assert kept.score > trainer.score(early.payload)


def test_store_keeps_a_checkpoint_better_than_the_last_weights(one_thread, hipct):
    """The defect: the file a run keeps was worse than one it had seen. Through the shared
    loop and the store (what ``compress`` and Stop use), a run whose last weights are forced
    worse keeps its best checkpoint, measured on the whole volume as the trainer measured."""
    comp = Compressor(hipct, 256, train=TrainConfig(steps=260), run=RUN)
    assert comp.plan.family == "grid"
    model, steps, seconds = drain(comp.train())
    assert comp.final_choice == "last"  # the grid trainer chose among files, not floats
    saved = model.best_payload
    assert saved is not None  # the checkpoint at step 200 (or the best-loss snapshot's)
    best_psnr = comp.payload_psnr(saved)
    _ruin(model)
    stored = comp.store(model, steps, seconds)
    assert stored.report.psnr == round(best_psnr, 2)
    assert len(stored.data) <= comp.budget


def test_store_and_trainer_judge_a_payload_alike(hipct):
    comp = Compressor(hipct, 256, run=RUN)
    assert comp.family.judged_on_volume
    # the store's own config and payload budget (a file's header takes bytes of the budget)
    cfg, limit = comp.header.model, comp.payload_budget
    settings = TrainSettings(steps=20, checkpoint_every=10**6)
    trainer = GridTrainer(Normalization.of(hipct).apply(hipct), cfg, limit, settings)
    for _ in range(20):
        trainer.advance()
    payload = next(fit_candidates(trainer.model, trainer.limit)).payload
    assert comp.payload_error(payload) == pytest.approx(-trainer.score(payload), rel=1e-9)


def test_a_checkpoint_decodes_a_sample_not_the_volume(hipct, monkeypatch):
    decoded = []
    real = grid_train.decode_region

    def counting(model, roi=None, stride=1, **kw):
        values, labels = real(model, roi, stride, **kw)
        decoded.append(values.size)
        return values, labels

    monkeypatch.setattr(grid_train, "decode_region", counting)
    trainer = _trainer(hipct, 30)
    for _ in range(30):
        trainer.advance()
    trainer.checkpoint()
    assert hipct.size >= 4 * CHECKPOINT_VOXELS
    assert 1 <= len(decoded) <= len(trainer.network_steps)
    assert all(CHECKPOINT_VOXELS // 2 < n <= CHECKPOINT_VOXELS for n in decoded)
    decoded.clear()
    trainer.final()  # the final choice decodes every voxel of each candidate
    assert decoded and all(n == hipct.size for n in decoded)


def test_checkpoints_do_not_steer_training(one_thread, hipct):
    """Same steps and seed, checkpoints or none: the same weights and the same final bytes."""
    often, never = _trainer(hipct, 40, every=10), _trainer(hipct, 40)
    a, b = drain(often.run()), drain(never.run())
    assert [h["measure"] for h in often.history] == ["sample"] * 3 + ["volume"]
    for x, y in zip(often.model.parameters(), never.model.parameters(), strict=True):
        assert torch.equal(x, y)
    assert a.score >= b.score  # a checkpoint is one more candidate, never a worse choice


def test_sample_ranks_checkpoints_as_the_volume_does(one_thread, hipct):
    """The sample picks the checkpoint the whole volume would (or one within 0.02 dB)."""
    trainer = _trainer(hipct, 200)
    results = []
    for step in range(1, 201):
        trainer.advance()
        if step % 25 == 0:
            results.append(trainer.checkpoint())
    volume = np.array([trainer.score(r.payload) for r in results])
    sample = np.array([r.score for r in results])
    chosen = int(np.argmax(sample))
    assert trainer.best is results[chosen]
    db = 10 * np.log10(volume.max() / volume[chosen])  # scores are minus MSE
    assert db < 0.02


def test_fixed_steps_store_the_same_bytes(one_thread, hipct):
    """Checkpoints and the end-of-training choice are deterministic: two runs of the same steps
    and seed store the same file (but for the training summary's seconds)."""
    from .test_golden_bytes import stable_digest

    files = [Compressor(hipct, 256, train=TrainConfig(steps=260), run=RUN).fit() for _ in range(2)]
    assert stable_digest(files[0].data) == stable_digest(files[1].data)
    assert files[0].report.psnr == files[1].report.psnr


def test_a_checkpoint_whose_plain_rounding_fits_packs_nothing_more(hipct, monkeypatch):
    """The calibration's pack of the same weights is reused; its plain rounding fitting, no
    coarser network is tried (one decode of the sample). Over the budget, the bytes are the
    same with or without the reused pack, and within the budget."""
    from napari_moec.families.grid import fit as grid_fit

    trainer = _trainer(hipct, 20)
    for _ in range(20):
        trainer.advance()
    plain = grid_fit.pack_model(trainer.model)
    packs, scores = [], []
    real = grid_fit.pack_payload
    monkeypatch.setattr(grid_fit, "pack_payload", lambda *a, **k: packs.append(1) or real(*a, **k))

    def score(payload):
        scores.append(payload)
        return trainer.score_sample(payload)

    fitted = grid_fit.fit_checkpoint(trainer.model, len(plain), score, plain=plain)
    assert fitted.payload == plain and not packs and scores == [plain]
    tight = len(plain) - 40
    again = grid_fit.fit_checkpoint(trainer.model, tight, score, plain=plain)
    assert len(again.payload) <= tight and again.payload != plain
    fresh = grid_fit.fit_checkpoint(trainer.model, tight, trainer.score_sample)
    assert fresh.payload == again.payload
