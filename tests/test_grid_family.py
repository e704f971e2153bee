"""The grid family through the model-family contract (``families/base.py``): sizing, building,
the training step, the budget fit, the codec and region decoding, as the shared code calls
them. Skipped until the contract module is merged beside this package."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

base = pytest.importorskip("napari_moec.families.base")

from napari_moec.config import QuantConfig, TrainConfig  # noqa: E402
from napari_moec.errors import ConfigError  # noqa: E402
from napari_moec.families.grid import FAMILY  # noqa: E402
from napari_moec.families.grid.codec import CODEC  # noqa: E402

QUANT = QuantConfig("int8", False, True)


def _volume(shape=(16, 20, 18)) -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.tanh(rng.normal(size=shape).cumsum(0).cumsum(2) / 40).astype(np.float32)


class _Request(base.SizeRequest):
    """A request whose frame costs 60 bytes (the planner's accounting is tested with it)."""

    def file_nbytes(self, config, predicted_payload: int) -> int:
        return 60 + predicted_payload


def _request(vol, budget, options=None):
    header = SimpleNamespace(shape=vol.shape, dtype="float32", quant=QUANT)
    return _Request(header, budget, options)


def test_protocols_are_met():
    assert isinstance(FAMILY, base.ModelFamily)
    assert isinstance(CODEC, base.PayloadCodec) and CODEC.family == FAMILY.name == "grid"


def test_train_fit_store_decode_through_the_contract():
    vol = _volume()
    budget = vol.nbytes // 64
    cfg = FAMILY.size(_request(vol, budget, FAMILY.default_options()))
    assert 60 + FAMILY.predict_payload_nbytes(cfg, QUANT) <= budget
    model = FAMILY.build(cfg, generator=torch.Generator().manual_seed(0))
    target = base.TrainingTarget(torch.from_numpy(vol.reshape(-1)), vol.shape)
    trainer = FAMILY.trainer(
        model,
        cfg,
        QUANT,
        TrainConfig(steps=40),
        target,
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(1),
        budget=budget - 60,
    )
    assert isinstance(trainer, base.FamilyTrainer) and trainer.model is model
    stats = [trainer.step(i / 40, 1.0) for i in range(40)]
    assert stats[-1].distortion.item() < stats[0].distortion.item()
    assert [s.phase for s in stats].count("ste") == 4 and sum(s.restart_best for s in stats) == 1
    assert stats[0].load.shape == (1,) and float(stats[0].kept) == 1.0

    def distortion(payload: bytes) -> float:
        weights = CODEC.unpack_payload(cfg, QUANT, payload)
        values, _ = FAMILY.decode_region(FAMILY.model_from_weights(cfg, weights), vol.shape)
        return float(np.mean((values - vol) ** 2))

    fit = FAMILY.fit_payload(model, cfg, QUANT, budget - 60, distortion=distortion)
    assert len(fit.payload) <= budget - 60
    assert distortion(fit.payload) < stats[0].distortion.item()  # trained, stored, decoded
    again = FAMILY.model_from_weights(cfg, CODEC.unpack_payload(cfg, QUANT, fit.payload))
    full, labels = FAMILY.decode_region(again, vol.shape)
    part, part_labels = FAMILY.decode_region(
        again, vol.shape, roi=[(2, 20), None, (5, 9)], stride=2
    )
    np.testing.assert_allclose(part, full[2:20:2, ::2, 5:9:2], atol=1e-5)
    assert labels.dtype == np.uint8 and np.array_equal(part_labels, labels[2:20:2, ::2, 5:9:2])
    coords = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])
    values, _top1 = again.decode(coords)
    np.testing.assert_allclose(values[:, 0].numpy(), [full[0, 0, 0], full[-1, -1, -1]], atol=1e-4)


def test_too_small_budget_names_the_ratio():
    vol = _volume()
    with pytest.raises(ConfigError, match="highest possible ratio"):
        FAMILY.size(_request(vol, 100))


def test_sizing_puts_latents_on_the_voxel_lattice_at_high_rates_or_small_grids():
    """About a bit a voxel (16x of 16-bit data) starts the levels at the lattice itself; at a
    few tenths of a bit only a grid of at most SMALL_GRID_LATENTS does (0.2 bits a latent),
    a larger one stays at 1/2 (sizing.py: 16x files were half empty with levels from 1/2; the
    macaque's 5 M lattice latents at 64x trained too few steps in 5 minutes)."""
    from napari_moec.families.grid.sizing import SMALL_GRID_LATENTS, auto_config

    for side, first_at_64x in ((64, 0), (128, 1)):
        shape = (side,) * 3
        voxels = side**3
        assert FAMILY.size(_request(np.empty(shape), voxels * 2 // 16)).first_level == 0
        cfg = FAMILY.size(_request(np.empty(shape), voxels * 2 // 64))
        assert cfg.first_level == first_at_64x
        lattice = auto_config(shape, voxels * 2 // 64, first_level=0).latent_count
        assert (lattice <= SMALL_GRID_LATENTS) == (first_at_64x == 0)
    # under a quality target the budget is a ceiling, not the rate: no lattice level
    header = SimpleNamespace(shape=(64,) * 3, dtype="float32", quant=QUANT)
    ceiling = _Request(header, 64**3 * 2 // 16, None, quality_target=True)
    assert FAMILY.size(ceiling).first_level == 1


def test_small_grids_start_finer_off_the_lattice_only_with_enough_bits():
    """Off the lattice a grid of at most SMALL_GRID_LATENTS latents needs 0.35 bits a latent
    but 4,096 bits in all; a larger one 0.5 (sizing.py's table of timed cells)."""
    from napari_moec.families.grid.sizing import min_latent_bits

    assert min_latent_bits(40_000, 1) == pytest.approx(0.35 * 40_000)
    assert min_latent_bits(40_000, 0) == pytest.approx(0.2 * 40_000)
    assert min_latent_bits(2_000, 2) == pytest.approx(0.5 * 2_000)  # 4,096 bits > 0.5 each
    assert min_latent_bits(10_000, 2) == 4096
    assert min_latent_bits(2_000_000, 1) == pytest.approx(0.5 * 2_000_000)
    # 64^3 of 16-bit data at 256x: levels from 1/2 (41,731 latents, ~0.36 bits each)
    cfg = FAMILY.size(_request(np.empty((64, 64, 64)), 64**3 * 2 // 256))
    assert (cfg.first_level, cfg.expert_layers) == (1, 2)
    assert FAMILY.predict_payload_nbytes(cfg, QUANT) <= 64**3 * 2 // 256


def test_the_smallest_budgets_get_one_layer_experts_before_giving_up():
    shape = (64, 64, 64)
    assert FAMILY.size(_request(np.empty(shape), 130)).expert_layers == 2
    for budget, hidden in ((110, 4), (100, 2)):  # one layer 4 wide, then 2 wide
        lean = FAMILY.size(_request(np.empty(shape), budget))
        assert (lean.expert_layers, lean.hidden) == (1, hidden)
        assert 60 + FAMILY.predict_payload_nbytes(lean, QUANT) <= budget
    with pytest.raises(ConfigError, match="highest possible ratio"):
        FAMILY.size(_request(np.empty(shape), 95))
    # a width the user chose is kept: the ladder stops at one layer of that width
    chosen = SimpleNamespace(num_experts=1, top_k=1, hidden_features=4)
    with pytest.raises(ConfigError, match="highest possible ratio"):
        FAMILY.size(_request(np.empty(shape), 100, chosen))


def test_auto_top_k_is_two_under_a_router_and_a_chosen_top_k_is_kept():
    """The "auto" top-k (None) is the grid family's ``AUTO_TOP_K`` where there is a router (it
    measured ahead of top-1 at equal bytes and time), 1 for one network; the SIREN family's
    "auto" stays 1 (its top-2 measured worse); a user's choice is kept by both."""
    from napari_moec.config import ArchConfig
    from napari_moec.plan import plan

    def sized(**arch):
        return FAMILY.size(_request(np.empty((64, 64, 64)), 8132, ArchConfig(**arch)))

    assert sized(model="grid", num_experts=4).top_k == 2
    assert sized(model="grid", num_experts=4, top_k=1).top_k == 1
    assert sized(model="grid", num_experts=1).top_k == 1
    assert sized(model="grid").num_experts == 1 and sized(model="grid").top_k == 1
    siren = plan((64, 64, 64), "float32", 64, arch=ArchConfig(model="siren", num_experts=4))
    assert (siren.model.num_experts, siren.model.top_k) == (4, 1)
    chosen = plan(
        (64, 64, 64), "float32", 64, arch=ArchConfig(model="siren", num_experts=4, top_k=2)
    )
    assert chosen.model.top_k == 2
    with pytest.raises(ConfigError, match="top_k"):
        ArchConfig(num_experts=1, top_k=2)


@pytest.mark.parametrize("experts", [2, 4])
def test_routed_models_are_sized_with_their_router_and_experts_priced(experts):
    """The latents get >= min_latent_bits bits after the *routed* network's bytes
    (router, every expert, side bytes), and one level finer would not: before, a routed model
    was priced as one network, its levels overran the budget and the lean ladder left it 152
    latents of 1/16 at hipct 1024x where one network had 5,794. The gate is
    ROUTED_GATE_HIDDEN wide unless chosen; its experts have ROUTED_SHALLOW_LAYERS layers
    where that alone buys the latents a finer level, else two (one network's)."""
    from napari_moec.families.grid.payload import side_bytes
    from napari_moec.families.grid.sizing import (
        ROUTED_GATE_HIDDEN,
        ROUTED_SHALLOW_LAYERS,
        auto_config,
        min_latent_bits,
        network_bytes,
    )

    def free_bits(cfg, payload):
        return 8 * (payload - network_bytes(cfg) - side_bytes(cfg))

    for shape, payload in (((64, 64, 64), 452), ((94, 256, 256), 684), ((64, 64, 64), 8132)):
        cfg = auto_config(shape, payload, num_experts=experts)
        assert cfg.gate_hidden == ROUTED_GATE_HIDDEN
        deep = auto_config(shape, payload, num_experts=experts, expert_layers=2)
        shallow = auto_config(shape, payload, num_experts=experts, expert_layers=1)
        assert cfg == (shallow if shallow.first_level < deep.first_level else deep)
        assert free_bits(cfg, payload) >= min_latent_bits(cfg.latent_count, cfg.first_level)
        if cfg.first_level > 0:
            finer = auto_config(
                shape, payload, num_experts=experts, first_level=cfg.first_level - 1
            )
            assert free_bits(finer, payload) < min_latent_bits(
                finer.latent_count, finer.first_level
            )
    assert auto_config((64,) * 3, 452, num_experts=experts, gate_hidden=8).gate_hidden == 8
    # a payload of 8,132 bytes for 64^3 (hipct 64x less a 60-byte frame): one layer buys
    # the lattice, one network's level (two layers: 1/2)
    lean = auto_config((64,) * 3, 8132, num_experts=experts)
    assert (lean.expert_layers, lean.first_level) == (ROUTED_SHALLOW_LAYERS, 0)
    assert auto_config((64,) * 3, 8132, num_experts=experts, expert_layers=2).first_level == 1
    assert auto_config((64,) * 3, 8132).expert_layers == 2  # one network: two layers
    # the macaque's 256x file: the same level either way, so two layers
    assert auto_config((128, 206, 168), 69156, num_experts=experts).expert_layers == 2
    # through the family: hipct's 1024x file (512 bytes) keeps two layers 4 wide
    routed = FAMILY.size(
        _request(
            np.empty((64, 64, 64)),
            512,
            SimpleNamespace(num_experts=experts, top_k=1, hidden_features=None),
        )
    )
    assert (routed.hidden, routed.expert_layers, routed.first_level) == (4, 2, 3)


@pytest.mark.parametrize(
    ("shape", "gate"), [((24, 28, 20), 4), ((24, 28, 20), 8), ((3, 16, 18, 14), 4)]
)
def test_the_router_starts_on_a_balanced_split_at_every_gate_width(shape, gate):
    """Every expert starts with a share of the volume (Neural Experts' balanced
    pre-assignment), also with gates narrower than 2 units a coordinate (the sizing's
    ROUTED_GATE_HIDDEN): a random start left a 40-step 4-expert widget run with one label."""
    from napari_moec.families.grid.config import GridConfig
    from napari_moec.families.grid.decode import decode_region
    from napari_moec.families.grid.model import GridModel

    cfg = GridConfig(shape=shape, num_levels=3, num_experts=4, gate_hidden=gate)
    for seed in range(3):
        model = GridModel(cfg, generator=torch.Generator().manual_seed(seed)).eval()
        _, labels = decode_region(model, values=False, labels=True)
        shares = np.bincount(labels.ravel(), minlength=4) / labels.size
        assert shares.min() > 0.02, shares
