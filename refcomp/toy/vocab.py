"""The toy world's attributes and words: shapes, colours, textures, backgrounds.

Object colours are saturated (HSV saturation 1) and backgrounds are pale (saturation
<= 0.2), so the evaluator can tell objects from background by saturation alone.
Textures mix an object's colour with a darker shade of the same hue (value x
`DARK`), so a texture never changes the hue the evaluator reads.
"""
from __future__ import annotations

SHAPES: tuple[str, ...] = ("square", "circle", "triangle", "diamond", "cross", "star", "hexagon", "heart")

# name -> RGB in [0, 1]; hues spread around the wheel so they stay distinct after darkening
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0),
    "orange": (1.0, 0.5, 0.0),
    "yellow": (1.0, 0.9, 0.0),
    "green": (0.0, 0.8, 0.0),
    "cyan": (0.0, 0.85, 0.85),
    "blue": (0.0, 0.25, 1.0),
    "purple": (0.55, 0.0, 1.0),
    "magenta": (1.0, 0.0, 0.75),
}

TEXTURES: tuple[str, ...] = ("solid", "stripes", "dots", "checker")
TEXTURE_WORDS: dict[str, str] = {"solid": "plain", "stripes": "striped", "dots": "dotted", "checker": "checkered"}

# Pale background colours (low saturation, high value).
BACKGROUNDS: dict[str, tuple[float, float, float]] = {
    "white": (1.0, 1.0, 1.0),
    "grey": (0.82, 0.82, 0.82),
    "cream": (0.98, 0.94, 0.82),
    "mint": (0.84, 0.96, 0.88),
    "sky": (0.84, 0.90, 1.0),
}

DEPTH_LABELS: tuple[str, ...] = ("bg", "mg", "fg")
DARK = 0.45                   # value multiplier of a texture's second shade
TEXTURE_PERIOD = 8            # px; equal to the packing factor, so every token sees whole periods


def instance_caption(colour: str, texture: str, shape: str) -> str:
    """'a red striped star'"""
    article = "an" if colour[0] in "aeiou" else "a"
    return f"{article} {colour} {TEXTURE_WORDS[texture]} {shape}"


def background_caption(kind: str, top: str, bottom: str) -> str:
    """'on a grey background' or 'on a grey to sky gradient'"""
    return f"on a {top} background" if kind == "solid" else f"on a {top} to {bottom} gradient"


FILLER_WORDS: tuple[str, ...] = ("a", "an", "and", "on", "to", "background", "gradient")
VOCAB: tuple[str, ...] = ("<pad>", "<unk>", *FILLER_WORDS, *SHAPES, *COLOURS, *TEXTURE_WORDS.values(),
                          *(b for b in BACKGROUNDS if b not in COLOURS))
