"""The MoE SIREN as a :class:`~napari_moec.families.base.ModelFamily`: what the shared planner,
training loop and rate control call (paper §3.5/§4.1: joint router + expert training on
random coordinates with MSE plus the balance loss, expert capacity with uniform dispatch,
router frozen late in the schedule, quantization-aware training at the end).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch.func import functional_call

from ...config import ArchConfig, ModelConfig, QuantConfig, TrainConfig
from ...decode import evaluate, evaluate_with_labels
from ...quantize import fake_quantize
from ...rate import fit_payload
from ...sampling import flat_index_coords
from ...schedule import DEFAULT_STEPS, resolve_schedule
from ..base import Fit, SizeRequest, StepStats, TilePolicy, TrainingTarget
from .codec import CODEC
from .moe import MoESiren
from .sizing import predict_payload_nbytes, size_for_file

__all__ = ["FAMILY", "SirenFamily", "SirenTrainer"]


class SirenTrainer:
    """One optimiser step of the MoE SIREN: a random batch of voxels, MSE over the points the
    experts' capacity kept, plus the balance loss until the router freezes; from
    ``1 - qat_fraction`` of the schedule on, the forward pass uses fake-quantized weights."""

    def __init__(
        self,
        model: MoESiren,
        config: ModelConfig,
        quant: QuantConfig,
        schedule: TrainConfig,
        target: TrainingTarget,
        *,
        device: torch.device,
        generator: torch.Generator,
    ) -> None:
        self.model, self.config, self.quant, self.train = model, config, quant, schedule
        self.target, self.generator = target, generator
        self.num_experts = config.num_experts
        self.lr_schedule = resolve_schedule(schedule, config)
        # fused: one kernel per step instead of ~64 small ops (the CPU profile's advice).
        self.optimizer = torch.optim.Adam(model.parameters(), lr=self.lr_schedule.peak, fused=True)
        self.batch = min(schedule.batch_size, target.values.numel())
        self.frozen = config.num_experts == 1
        self.qat = False

    @property
    def peak_lr(self) -> float:
        return self.lr_schedule.peak

    def step(self, progress: float, lr_scale: float) -> StepStats:
        cfg, model, quant = self.train, self.model, self.quant
        lr = self.lr_schedule.lr(progress) * lr_scale
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if not self.frozen and progress >= cfg.freeze_router_at:
            for p in model.gate_parameters():
                p.requires_grad_(False)
                p.grad = None
            self.frozen = True
        restart = False
        if not self.qat and not quant.is_float and progress >= 1.0 - cfg.qat_fraction:
            self.qat = restart = True

        values = self.target.values
        index = torch.randint(values.numel(), (self.batch,), device=values.device,
                              generator=self.generator)  # fmt: skip
        coords = flat_index_coords(index, self.target.shape)
        if self.qat:
            params = {
                name: fake_quantize(p, quant.bits, quant.per_channel)
                for name, p in model.named_parameters()
            }
            out = functional_call(model, params, (coords, cfg.capacity_factor))
        else:
            out = model(coords, cfg.capacity_factor)
        kept = out.kept.to(out.value.dtype)
        err = (out.value[:, 0].float() - values[index]) ** 2
        mse = (err * kept).sum() / kept.sum().clamp(min=1.0)
        loss = mse if self.frozen else mse + cfg.balance_weight * out.aux_loss
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        routed = self.frozen and self.num_experts > 1
        phase = "qat" if self.qat else ("frozen" if routed else "train")
        return StepStats(mse.detach(), kept.mean().detach(), out.load.detach(), lr, phase, restart)


#: Tiles of a SIREN store (docs/tiled.md, tile size sweep and seams): a tile must hold enough
#: bytes for a network worth training (at a fixed ratio a larger tile gets a wider network,
#: which fits better but trains more slowly per step and sees each voxel less often), and
#: about 4 kB a tile was best. The margin, measured on the macaque at 256x with 64^3 tiles:
#: the same voxels lose 1.67 dB on a tile face with no margin, 0.52 dB with 4 voxels (1/16),
#: 0.07 dB with 8 (1/8).
SIREN_TILES = TilePolicy(
    edges=(32, 48, 64, 96, 128, 192, 256),
    target_bytes=4096,
    margin_fraction=1 / 8,
    min_margin=2,
    difficulty_exponent=0.3,  # measured (tiled/allocate.py)
)


class SirenFamily:
    """:class:`~napari_moec.families.base.ModelFamily` of the MoE SIREN."""

    name = "siren"
    judged_tile_fit = False
    tutel_routing = True
    judged_on_volume = False
    loss_guard = True
    tile_policy = SIREN_TILES
    codec = CODEC

    def default_options(self) -> ArchConfig:
        return ArchConfig()

    def size(self, request: SizeRequest) -> ModelConfig:
        return size_for_file(request.header, request.budget, request.options)

    def predict_payload_nbytes(self, config: ModelConfig, quant: QuantConfig) -> int:
        return predict_payload_nbytes(config, quant)

    def auto_steps(self, config: ModelConfig) -> int:
        return DEFAULT_STEPS

    def build(self, config: ModelConfig, *, generator: torch.Generator) -> MoESiren:
        """The network initialised from ``generator``'s state (a CPU generator): ``nn.init``
        draws from torch's global generator, so it runs with the global state set to the
        generator's and restored after (``fork_rng``); the generator is then advanced past the
        draws, as if they had been its own."""
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(generator.get_state())
            model = MoESiren(config)
            generator.set_state(torch.get_rng_state())
        return model

    def trainer(self, model, config, quant, schedule, target, *, device, generator, budget):
        # SIREN fits the rate after training (rate.py): the budget does not shape a step.
        return SirenTrainer(model, config, quant, schedule, target, device=device,
                            generator=generator)  # fmt: skip

    def fit_payload(
        self,
        model: MoESiren,
        config: ModelConfig,
        quant: QuantConfig,
        budget: int,
        *,
        distortion: Callable[[bytes], float] | None = None,
    ) -> Fit:
        state = {k: v.detach().cpu() for k, v in model.layout_state().items()}
        return fit_payload(config, quant, state, budget, distortion=distortion)

    def model_from_weights(self, config: ModelConfig, weights: Mapping) -> MoESiren:
        model = MoESiren(config)
        model.load_layout_state(weights)
        return model.eval()

    def decode_region(
        self,
        model,
        shape: Sequence[int],
        roi=None,
        stride=1,
        *,
        device=None,
        values: bool = True,
        labels: bool = True,
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        if values and labels:
            return evaluate_with_labels(model, shape, roi, stride, device=device)
        if labels:
            return None, evaluate(model, shape, roi, stride, labels=True, device=device)
        return evaluate(model, shape, roi, stride, device=device), None


#: The registry's entry (``napari_moec.families.get("siren")``).
FAMILY = SirenFamily()
