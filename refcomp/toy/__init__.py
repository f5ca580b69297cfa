"""The RefComp toy world (issue 5): procedural scenes, tiny frozen parts standing in
for FLUX / T5 / CLIP / DINOv2, and an evaluator that knows the truth.

Sizes: a 64x64 px scene goes through a fixed DCT codec (packing.py) into an 8x8 token grid of 64
channels (no VAE). Layout documents count FLUX pixels (16 per token), so a toy
layout is 128x128 "px" wide while the image is 64 px.

Axis letters used in this package: b batch, n instances, r references, H W pixels,
h w tokens, C channels per token, L text tokens, D width.
"""
