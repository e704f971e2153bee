"""The model-family seam (issue 21): the registry, the SIREN family against the contract, and
the ratio-free training generator."""

from __future__ import annotations

import pytest
import torch

from napari_moec import families
from napari_moec.config import ArchConfig, ModelConfig, QuantConfig, TrainConfig
from napari_moec.errors import ConfigError, MoecFormatError
from napari_moec.families.base import (
    DecodableModel,
    FamilyTrainer,
    ModelFamily,
    PayloadCodec,
    SizeRequest,
    TrainingTarget,
)
from napari_moec.families.siren.moe import MoESiren
from napari_moec.format import Header
from napari_moec.generators import drain
from napari_moec.plan import plan
from napari_moec.sampling import Normalization
from napari_moec.schedule import decoded_mse
from napari_moec.training import Trained, eval_set, train

CONFIG = ModelConfig(hidden_features=8, num_experts=2, gate_hidden=4, expert_layers=2)


def test_registry_knows_siren_and_refuses_unknown_names():
    family = families.get("siren")
    assert isinstance(family, ModelFamily) and family.name == "siren"
    assert isinstance(families.codec("siren"), PayloadCodec)
    assert families.get() is families.get("grid")  # the default
    assert families.LEGACY == "siren"  # what a file without a family field holds
    with pytest.raises(ConfigError, match="unknown model family"):
        families.get("nope")
    with pytest.raises(MoecFormatError, match="unknown model family"):
        families.codec("nope")


def test_build_is_the_generator_and_equals_the_seeded_global_init():
    family = families.get("siren")
    a = family.build(CONFIG, generator=torch.Generator().manual_seed(3))
    b = family.build(CONFIG, generator=torch.Generator().manual_seed(3))
    c = family.build(CONFIG, generator=torch.Generator().manual_seed(4))
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    assert not all(torch.equal(x, y) for x, y in zip(a.parameters(), c.parameters(), strict=True))
    # What the stored bytes were made from before the generator: the global RNG seeded alike.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        reference = MoESiren(CONFIG)
    for pa, pr in zip(a.parameters(), reference.parameters(), strict=True):
        assert torch.equal(pa, pr)
    assert isinstance(a, DecodableModel)


def test_build_leaves_the_global_rng_alone_and_advances_the_generator():
    family = families.get("siren")
    generator = torch.Generator().manual_seed(0)
    before = generator.get_state()
    state = torch.get_rng_state()
    family.build(CONFIG, generator=generator)
    assert torch.equal(torch.get_rng_state(), state)
    assert not torch.equal(generator.get_state(), before)


def test_size_request_sizes_like_plan():
    header = Header((16, 16, 16), "ZYX", "uint16", 0.0, 1.0, None, QuantConfig())
    request = SizeRequest(header, 512, ArchConfig(num_experts=2))
    model = families.get("siren").size(request)
    arch = ArchConfig(model="siren", num_experts=2)
    assert model == plan((16, 16, 16), "uint16", 16, arch=arch, value_range=(0.0, 1.0)).model
    family = families.get("siren")
    predicted = family.predict_payload_nbytes(model, header.quant)
    assert request.file_nbytes(model, predicted) <= 512


def test_plan_carries_the_payload_budget():
    from napari_moec.format import fixed_overhead

    assert plan((32, 32, 32), "uint16", 64).family == "grid"  # the default
    for model in ("grid", "siren"):
        p = plan((32, 32, 32), "uint16", 64, arch=ArchConfig(model=model))
        assert p.family == model
        assert 0 < p.payload_budget < p.budget
        assert p.payload_budget <= p.budget - fixed_overhead(p.header)


def test_train_needs_no_ratio_and_fits(volume16):
    family = families.get("siren")
    norm = Normalization.of(volume16)
    values = torch.from_numpy(norm.apply(volume16).reshape(-1))
    target = TrainingTarget(values, volume16.shape)
    schedule = TrainConfig(steps=60, batch_size=1024, report_every=10, seed=0, qat_fraction=0.2)
    model = family.build(CONFIG, generator=torch.Generator().manual_seed(0))
    coords, truth = eval_set(target, schedule.seed, torch.device("cpu"))
    untrained = decoded_mse(model, coords, truth)
    trainer = family.trainer(model, CONFIG, QuantConfig(), schedule, target,
                             device=torch.device("cpu"), generator=torch.Generator(),
                             budget=4096)  # fmt: skip
    assert isinstance(trainer, FamilyTrainer)
    events = []
    trained = drain(
        train(target, model, schedule, device=torch.device("cpu"),
              generator=torch.Generator().manual_seed(0), family=family, config=CONFIG,
              quant=QuantConfig(), budget=4096),
        events.append,
    )  # fmt: skip
    assert isinstance(trained, Trained)
    assert trained.steps == 60 and len(events) == 60
    assert {e.phase for e in events} >= {"train", "qat"}
    assert trained.final_choice in ("last", "best")
    assert decoded_mse(trained.model, coords, truth) < 0.5 * untrained


def test_train_stops_when_asked(volume16):
    import threading

    family = families.get("siren")
    values = torch.from_numpy(Normalization.of(volume16).apply(volume16).reshape(-1))
    stop = threading.Event()
    model = family.build(CONFIG, generator=torch.Generator().manual_seed(0))
    job = train(TrainingTarget(values, volume16.shape), model, TrainConfig(steps=500),
                device=torch.device("cpu"), generator=torch.Generator(), family=family,
                config=CONFIG, quant=QuantConfig(), budget=4096, stop=stop)  # fmt: skip

    def on_event(event):
        if event.step == 5:
            stop.set()

    assert drain(job, on_event).steps == 5
