"""Rate control: the finest quantization that fits, and the per-group precision it chooses."""

import numpy as np
import pytest
import torch

from napari_moec import ArchConfig, Compressor, RunConfig, TrainConfig
from napari_moec.config import ModelConfig, QuantConfig
from napari_moec.families.siren.moe import MoESiren
from napari_moec.format import pack_payload, unpack_payload
from napari_moec.rate import EXTRA_BITS, REFINED_GROUPS, fit_payload

MODEL = ModelConfig(hidden_features=12, num_experts=2, gate_hidden=6, w0_first=10.0)
QUANT = QuantConfig()


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return MoESiren(MODEL).layout_state()


def errors_by_group(state, payload) -> dict[str, float]:
    """Squared rounding error of each layout group of the weights ``payload`` holds."""
    stored = unpack_payload(MODEL, QUANT, payload)
    out: dict[str, float] = {}
    for name, weight in state.items():
        group = name.split(".")[0]
        out[group] = out.get(group, 0.0) + float(((stored[name] - weight) ** 2).sum())
    return out


def test_extra_bits_make_exactly_that_groups_grid_finer(state):
    def scales(payload):
        # A per-tensor payload opens with one float16 scale per tensor, in layout order.
        return dict(zip(state, np.frombuffer(payload, "<f2", count=len(state)), strict=True))

    uniform = pack_payload(MODEL, QUANT, state, 1.0)
    finer = pack_payload(MODEL, QUANT, state, 1.0, {"encoder": 2, "gate": -1})
    for name in state:
        expected = {"encoder": 0.25, "gate": 2.0}.get(name.split(".")[0], 1.0)
        assert scales(finer)[name] == expected * scales(uniform)[name]
    a, b = unpack_payload(MODEL, QUANT, uniform), unpack_payload(MODEL, QUANT, finer)
    for name in state:
        if name.startswith(("experts", "decoder")):
            assert torch.equal(a[name], b[name])
    encoder = [n for n in state if n.startswith("encoder")]
    assert sum(float(((b[n] - state[n]) ** 2).sum()) for n in encoder) < sum(
        float(((a[n] - state[n]) ** 2).sum()) for n in encoder
    )


def test_the_chosen_precision_fits_the_budget_and_never_judges_worse(state):
    budget = len(pack_payload(MODEL, QUANT, state, 1.0)) - 40

    def encoder_error(payload):
        return errors_by_group(state, payload)["encoder"]

    uniform = fit_payload(MODEL, QUANT, state, budget)
    refined = fit_payload(MODEL, QUANT, state, budget, distortion=encoder_error)
    assert uniform.extra_bits == {}
    assert len(uniform.payload) <= budget and len(refined.payload) <= budget
    # A judge that only sees the encoder asks for its finest grid, paid for by the rest.
    assert refined.extra_bits["encoder"] == max(EXTRA_BITS)
    assert encoder_error(refined.payload) < encoder_error(uniform.payload)
    assert refined.multiplier > uniform.multiplier
    assert (
        errors_by_group(state, refined.payload)["experts"]
        > errors_by_group(state, uniform.payload)["experts"]
    )


def test_a_judge_of_the_experts_keeps_one_uniform_grid(state):
    budget = len(pack_payload(MODEL, QUANT, state, 1.0)) - 40

    def experts_error(payload):
        return errors_by_group(state, payload)["experts"]

    refined = fit_payload(MODEL, QUANT, state, budget, distortion=experts_error)
    assert refined.extra_bits == {}
    assert refined == fit_payload(MODEL, QUANT, state, budget)


def test_groups_absent_from_the_network_are_not_tried():
    one = ModelConfig(hidden_features=12, num_experts=1, gate_hidden=6)
    torch.manual_seed(0)
    state = MoESiren(one).layout_state()
    tried: list[bytes] = []

    def judge(payload):
        tried.append(payload)
        return float(len(tried))  # every later candidate judged worse

    fit = fit_payload(one, QUANT, state, len(pack_payload(one, QUANT, state)), distortion=judge)
    assert "gate" in REFINED_GROUPS and not any(n.startswith("gate") for n in state)
    assert len(tried) == 1 + len(EXTRA_BITS)  # the uniform grid, then the encoder's bits
    assert fit.extra_bits == {}


def test_float_precisions_have_nothing_to_choose(state):
    fp16 = QuantConfig(precision="fp16")
    fit = fit_payload(MODEL, fp16, state, 10**6, distortion=lambda payload: 0.0)
    assert fit.multiplier == 1.0 and fit.extra_bits == {}


def test_a_compression_stores_the_choice_its_judge_prefers(volume16):
    compressor = Compressor(
        volume16,
        4,
        arch=ArchConfig(model="siren", num_experts=2),
        train=TrainConfig(steps=60, seed=0),
        run=RunConfig(device="cpu", threads=1),
    )
    compressed = compressor.fit()
    header, budget = compressor.header, compressor.payload_budget
    state = compressor.model.layout_state()  # the trained float weights the file was made of
    judged = fit_payload(header.model, header.quant, state, budget,
                         distortion=compressor.payload_error)  # fmt: skip
    uniform = fit_payload(header.model, header.quant, state, budget)
    assert judged.payload in compressed.data
    assert compressed.report.quant_extra_bits == judged.extra_bits
    assert compressed.report.quant_multiplier == judged.multiplier
    assert compressor.payload_error(judged.payload) <= compressor.payload_error(uniform.payload)
    assert compressed.nbytes <= compressor.budget
