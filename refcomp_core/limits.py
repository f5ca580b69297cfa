"""The limits a user can hit, in one place. docs/limits.md lists each with the
message it gives; change both together.

They are checked before anything is allocated or run, so an absurd input fails in
milliseconds with a message instead of deep inside an allocator or a tokenizer.
"""
from __future__ import annotations

from .errors import ReferenceImageError
from .values import one_line

MAX_INSTANCES = 50                  # boxes per layout (parse_layout's default max_instances)
MIN_SIDE_PX = 16                    # one FLUX token is 16 x 16 px
MAX_SIDE_PX = 8192                  # canvas width / height (the Layout Canvas node's maximum)
MAX_CAPTION_CHARS = 1000            # per box; CLIP-L reads only its first 77 tokens anyway
MAX_JSON_DEPTH = 32                 # nesting of unknown keys kept in a layout
MAX_IMAGE_PIXELS = 8192 * 8192      # a reference image, checked from its header before decoding
MAX_STEPS = 1000                    # sampling steps of `refcomp compose`
MAX_GUIDANCE = 100.0                # FLUX distilled guidance of `refcomp compose` (3.5 is typical)

# A checkpoint's refcomp_config, checked before anything is allocated: a damaged or hostile
# file must not make the loader build a terabyte adapter. FLUX.1 is far inside these.
MAX_FILE_DIM = 1 << 16              # widths and ranks (FLUX.1: hidden 3072, LoRA rank 128)
MAX_FILE_BLOCKS = 1024              # double / single blocks (FLUX.1: 19 / 38)
MAX_FILE_POINTS = 64                # dense_k (K x K sample points per box)
MAX_FILE_FREQS = 1024               # fourier_freqs


IMAGE_LIMIT = f"the {MAX_IMAGE_PIXELS / 1e6:.0f}-megapixel limit for a reference image"


def check_image_size(who: str, path: object, width: int, height: int) -> None:
    """Refuse a reference image over MAX_IMAGE_PIXELS from its header size, before decoding.
    `who` starts the message (the node's name or the CLI flag)."""
    if width * height > MAX_IMAGE_PIXELS:
        raise ReferenceImageError(f"{who}: the image {path} is {width}x{height} px ({width * height / 1e6:.0f} "
                                  f"megapixels), over {IMAGE_LIMIT}; downscale it (the image encoders see a few "
                                  "hundred pixels anyway)")


def unreadable_image(who: str, path: object, err: Exception) -> ReferenceImageError:
    """The error for an image the decoder (PIL) refused: damaged, truncated, or declaring so
    many pixels that PIL calls it a decompression bomb."""
    if type(err).__name__ == "DecompressionBombError":      # PIL's, matched by name: no PIL import here
        return ReferenceImageError(f"{who}: the image {path} declares more pixels than {IMAGE_LIMIT}; downscale it "
                                   "or remove it")
    return ReferenceImageError(f"{who}: cannot read the image {path} ({one_line(err)}); re-save it as PNG or JPEG, "
                               "or remove it")
