from dataclasses import replace

import numpy as np
import pytest

from napari_moec.config import ArchConfig, ModelConfig, QuantConfig
from napari_moec.errors import ConfigError
from napari_moec.families.siren.moe import MoESiren
from napari_moec.families.siren.sizing import (
    SINGLE_NETWORK_MAX_WIDTH,
    SINGLE_NETWORK_WIDTH,
    first_layer_w0,
    size_model,
    size_model_auto_experts,
)
from napari_moec.format import Header, count_parameters
from napari_moec.plan import (
    SUMMARY_PLACEHOLDER,
    budget_nbytes,
    check_ratio,
    plan,
    predict_nbytes,
    summary_for,
)


def header(precision="int8", shape=(64, 64, 64)):
    return Header(shape, "ZYX", "uint16", 0.0, 1.0, ModelConfig(), QuantConfig(precision))


def test_count_parameters_matches_module():
    cfg = ModelConfig(hidden_features=12, num_experts=3, expert_layers=2, gate_hidden=5)
    assert count_parameters(cfg) == sum(p.numel() for p in MoESiren(cfg).parameters())


def test_budget_is_floor_of_bytes_over_ratio():
    assert budget_nbytes(524288, 64) == 8192
    assert budget_nbytes(761856, 3000) == 253
    for bad in (0.5, float("nan"), float("inf"), "64"):
        with pytest.raises(ConfigError):
            budget_nbytes(1000, bad)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_size_model_is_widest_that_fits(precision):
    h = replace(header(precision), train=SUMMARY_PLACEHOLDER)  # 8 KB can afford it
    model = size_model(h, 8192)
    assert predict_nbytes(replace(h, model=model)) <= 8192
    wider = replace(
        model,
        hidden_features=model.hidden_features + 1,
        gate_hidden=(model.hidden_features + 1) // 2,
    )
    assert predict_nbytes(replace(h, model=wider)) > 8192


def test_fp32_file_size_prediction_is_exact():
    from napari_moec.format import pack

    h = replace(header("fp32"), model=ModelConfig(hidden_features=10, gate_hidden=5))
    state = MoESiren(h.model).layout_state()
    assert len(pack(h, state)) == predict_nbytes(h)


def test_stored_precision_buys_parameters():
    widths = {p: size_model(header(p), 8192).hidden_features for p in ("fp32", "fp16", "int8")}
    assert widths["fp32"] < widths["fp16"] < widths["int8"]


def test_impossible_budget_names_the_highest_ratio():
    with pytest.raises(ConfigError, match=r"highest possible ratio is \d+x"):
        size_model(header(), 50)


def test_training_summary_only_where_it_costs_under_two_percent():
    h = header()
    assert summary_for(h, 8192) == SUMMARY_PLACEHOLDER
    assert summary_for(h, 500) is None
    # At 3000x of a 64³ volume (174 bytes) the sized network fits only without the summary.
    tight = size_model(h, 174)
    assert predict_nbytes(replace(h, model=tight)) <= 174
    assert predict_nbytes(replace(h, model=tight, train=SUMMARY_PLACEHOLDER)) > 174


def test_first_layer_w0_grows_with_width_within_bounds():
    values = [first_layer_w0(w) for w in range(1, 200)]
    assert values == sorted(values)  # never lower for a wider network
    assert values[0] >= 1.0 and values[-1] == 30.0  # wide networks keep SIREN's ω0 = 30
    assert values[1] < 10.0  # the extreme ratios' width-2 networks get low frequencies
    assert all(v == int(v) for v in values)  # short header JSON


def test_auto_experts_drop_to_one_only_where_two_would_be_too_narrow():
    h = header()
    narrow = size_model_auto_experts(h, 512)  # 1024x of a 64³ uint16 volume
    one = size_model(replace(h, model=replace(h.model, num_experts=1)), 512)
    assert one.hidden_features < SINGLE_NETWORK_WIDTH  # so the router stays
    assert narrow.num_experts == 2 and narrow.hidden_features >= 4
    tight = size_model_auto_experts(h, 174)  # 3000x of a 64³ uint16 volume
    two = size_model(h, 174)  # ModelConfig() default: 2 experts
    assert two.num_experts == 2 and two.hidden_features < 4
    assert tight.num_experts == 1 and tight.hidden_features > two.hidden_features
    top2 = size_model_auto_experts(replace(h, model=replace(h.model, top_k=2)), 174)
    assert top2.num_experts == 1 and top2.top_k == 1
    with pytest.raises(ConfigError, match="highest possible ratio"):
        size_model_auto_experts(h, 60)


@pytest.mark.parametrize("top_k", [1, 2])
def test_auto_stores_one_network_where_it_would_be_wide(top_k):
    h = header()
    h = replace(h, model=replace(h.model, top_k=top_k))
    wide = size_model_auto_experts(h, 8192)  # 64x of a 64³ uint16 volume
    assert wide.num_experts == 1 and wide.top_k == 1
    assert wide.hidden_features >= SINGLE_NETWORK_WIDTH
    assert wide == size_model(replace(h, model=replace(h.model, num_experts=1, top_k=1)), 8192)
    siren = ArchConfig(model="siren")
    assert plan((64, 64, 64), np.uint16, 64, arch=siren).model == wide  # the planner applies it


def _smallest_budget(h, width: int) -> int:
    """The smallest budget whose single network is at least ``width`` wide."""
    single = replace(h, model=replace(h.model, num_experts=1))
    lo, hi = 200, 10**6
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if size_model(single, mid).hidden_features < width else (lo, mid)
    return lo


def test_the_single_network_window_is_exact():
    h = header()
    low = _smallest_budget(h, SINGLE_NETWORK_WIDTH)
    assert size_model_auto_experts(h, low).num_experts == 1
    below = size_model_auto_experts(h, low - 1)
    assert below.num_experts == 2 and below.hidden_features < SINGLE_NETWORK_WIDTH
    high = _smallest_budget(h, SINGLE_NETWORK_MAX_WIDTH + 1)
    top = size_model_auto_experts(h, high - 1)
    assert top.num_experts == 1 and top.hidden_features == SINGLE_NETWORK_MAX_WIDTH
    above = size_model_auto_experts(h, high)
    assert above.num_experts == 2  # a wide budget goes back to a partition
    assert above == size_model(h, high)


def test_ratio_rule_is_one_rule():
    assert check_ratio(1) == 1.0 and check_ratio(64) == 64.0
    for bad in (0.99, 0, -3, float("nan"), float("inf"), "64", True):
        with pytest.raises(ConfigError, match="ratio"):
            check_ratio(bad)


class _Untouchable:
    """An array-like whose pixels must not be read: plan() needs only shape and dtype."""

    shape = (64, 64, 64)
    dtype = np.dtype("uint16")

    def __array__(self, *args, **kwargs):
        raise AssertionError("plan() read the pixels")


def test_plan_reads_no_pixels_and_matches_the_compressor(volume16):
    from napari_moec import Compressor

    lazy = _Untouchable()
    p = plan(lazy.shape, lazy.dtype, 64, arch=ArchConfig(num_experts=3))
    assert p.budget == 64**3 * 2 // 64 and p.model.num_experts == 3
    assert p.predicted_nbytes <= p.budget and p.stores_summary
    real = Compressor(volume16, 8).plan
    estimate = plan(volume16.shape, volume16.dtype, 8)
    # The estimate uses a placeholder value range: the header may differ by a few bytes, the
    # network by at most one unit of width.
    assert abs(real.model.hidden_features - estimate.model.hidden_features) <= 1
    assert real.header.vmin == float(volume16.min()) and real.header.vmax == float(volume16.max())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"shape": (8, 8), "dtype": "uint16"}, "3D"),
        ({"shape": (8, 8, 8), "dtype": "float64"}, "dtype"),
        ({"shape": (8, 8, 8), "dtype": "uint16", "axes": "ZZX"}, "axes"),
        ({"shape": (8, 8, 8), "dtype": "uint16", "spacing": (1, 0, 1)}, "spacing"),
        ({"shape": (8, 8, 8), "dtype": "uint16", "ratio": 0.5}, "ratio"),
        ({"shape": (8, 8, 8), "dtype": "uint16", "ratio": 5000}, "highest possible ratio"),
    ],
)
def test_plan_names_the_problem(kwargs, match):
    kwargs = {"ratio": 4} | kwargs
    with pytest.raises(ConfigError, match=match):
        plan(kwargs.pop("shape"), kwargs.pop("dtype"), kwargs.pop("ratio"), **kwargs)
