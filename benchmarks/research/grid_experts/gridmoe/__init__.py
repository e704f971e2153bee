"""Prototype: multi-resolution latent grids + routed MLP experts (a Cool-chic-style codec
with a Mixture-of-Experts synthesis) for napari-moec. Research code, not the product.

Modules
-------
interp   separable interpolation matrices (linear / cubic B-spline) for 3D/4D grids of any
         shape, full volume or any region at any stride.
model    GridMoE: latent grids -> per-voxel features -> router (top-k) -> MLP experts ->
         gate-weighted sum -> linear decoder; the rate proxy of the latents.
coding   quantization + constriction ANS coding of grids and MLP weights, exact byte count,
         pack/unpack of a prototype file, fitting a byte budget exactly.
train    training loop with online rate control (lambda adapted toward the budget), timed
         checkpoints that write and decode a real file.
"""
