import math

import pytest
import torch

from napari_moec.config import ModelConfig
from napari_moec.families.siren.gate import balance_loss, route
from napari_moec.families.siren.moe import MoESiren, dispatch_slots
from napari_moec.families.siren.sine import BatchedSineExperts, SineLayer


def test_siren_init_bounds():
    torch.manual_seed(0)
    first = SineLayer(3, 64, 30.0, is_first=True)
    assert first.linear.weight.abs().max() <= 1 / 3
    hidden = SineLayer(64, 64, 30.0, is_first=False)
    bound = math.sqrt(6 / 64) / 30
    assert hidden.linear.weight.abs().max() <= bound
    assert hidden.linear.weight.abs().max() > 0.9 * bound  # uses the whole range
    experts = BatchedSineExperts(4, 64, 2, 30.0)
    for w in experts.weights:
        assert w.shape == (4, 64, 64)
        assert w.abs().max() <= bound


def test_one_expert_moe_equals_plain_siren():
    torch.manual_seed(0)
    model = MoESiren(ModelConfig(hidden_features=8, num_experts=1, expert_layers=2))
    x = torch.rand(50, 3) * 2 - 1
    h = torch.sin(30 * model.encoder.linear(x))
    for w, b in zip(model.experts.weights, model.experts.biases, strict=True):
        h = torch.sin(30 * (h @ w[0] + b[0]))
    expected = model.decoder(h)
    out = model(x, capacity_factor=None)
    torch.testing.assert_close(out.value, expected)
    assert out.kept.all()


def test_route_top_k_selection_and_weights():
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 1.0]])
    r1 = route(logits, 1)
    assert r1.expert_index[:, 0].tolist() == [1, 0]
    probs = torch.softmax(logits, -1)
    torch.testing.assert_close(r1.weight[:, 0], probs.max(-1).values)
    r2 = route(logits, 2)
    assert r2.expert_index.tolist() == [[1, 2], [0, 2]]
    torch.testing.assert_close(r2.weight.sum(-1), torch.ones(2))


def test_balance_loss_is_one_at_uniform_load_and_larger_when_skewed():
    n, batch = 4, 8
    uniform = torch.full((batch, n), 1.0 / n)
    top1 = torch.arange(batch) % n
    assert balance_loss(uniform, top1).item() == pytest.approx(1.0)
    skewed = torch.softmax(torch.tensor([[5.0, 0, 0, 0]] * batch), -1)
    assert balance_loss(skewed, torch.zeros(batch, dtype=torch.long)).item() > 3.0


def test_dispatch_capacity_drops_overflow_and_prioritises_first_choices():
    # 5 points, 2 experts, capacity 2: expert 0 is first choice of 4 points.
    index = torch.tensor([[0, 1], [0, 1], [0, 1], [0, 1], [1, 0]])
    slot, keep, cap = dispatch_slots(index, 2, capacity=2)
    assert cap == 2
    first, second = keep[:5], keep[5:]
    assert first.tolist() == [True, True, False, False, True]
    # Expert 1 already holds point 4's first choice: only one second choice fits.
    assert second.tolist() == [True, False, False, False, False]
    assert len(set(slot[keep].tolist())) == int(keep.sum())  # no two points share a slot
    assert slot[keep].max() < 2 * cap


def test_dispatch_dropless_when_capacity_is_none():
    index = torch.tensor([[0], [0], [0], [1]])
    _, keep, cap = dispatch_slots(index, 2, capacity=None)
    assert cap == 3 and keep.all()


def test_forward_pads_underfull_experts_and_reports_drops():
    torch.manual_seed(0)
    model = MoESiren(ModelConfig(hidden_features=8, num_experts=4))
    x = torch.rand(64, 3) * 2 - 1
    out = model(x, capacity_factor=0.5)  # capacity 8 per expert: at most 32 of 64 kept
    assert out.kept.sum() <= 32
    assert out.load.sum().item() == pytest.approx(1.0)
    full = model(x, capacity_factor=None)
    assert full.kept.all()
    # Kept points get the same value whether or not others were dropped.
    torch.testing.assert_close(out.value[out.kept], full.value[out.kept])


def test_gradients_reach_router_through_top1_weight():
    torch.manual_seed(0)
    model = MoESiren(ModelConfig(hidden_features=8, num_experts=2))
    out = model(torch.rand(32, 3), capacity_factor=2.0)
    out.value.sum().backward()
    assert model.gate.net[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize(("experts", "top_k"), [(2, 1), (3, 2), (8, 1)])
def test_decoding_without_capacity_buffers_equals_the_training_path(experts, top_k):
    """Without gradients each expert runs on exactly its own points (no buffers sized to the
    busiest expert); the result must be the same function as the dropless training path."""
    torch.manual_seed(experts)
    config = ModelConfig(hidden_features=12, num_experts=experts, top_k=top_k, gate_hidden=6)
    model = MoESiren(config).eval()
    with torch.no_grad():
        model.gate.net[4].bias[0] += 2.0  # an uneven partition, where buffers waste most
    coords = torch.rand(3000, 3) * 2 - 1
    with torch.no_grad():
        grouped = model(coords)
    with torch.enable_grad():
        buffered = model(coords)
    torch.testing.assert_close(grouped.value, buffered.value.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grouped.load, buffered.load)
