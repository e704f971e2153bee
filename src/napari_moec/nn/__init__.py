"""Neural network building blocks: SIREN layers, the router and the MoE SIREN."""

from .gate import Gate, Routing, route
from .moe import MoEOutput, MoESiren
from .siren import BatchedSineExperts, SineLayer

__all__ = ["BatchedSineExperts", "Gate", "MoEOutput", "MoESiren", "Routing", "SineLayer", "route"]
