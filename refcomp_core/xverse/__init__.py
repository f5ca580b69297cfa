"""XVerse (ByteDance) on FLUX.1, from its released weights (WEIGHTS_COMPAT §2).

- `config`: `XVerseConfig`, the adapter sizes of `modulation_adapter/config.json` and the LoRA sites;
- `resampler`: the T-Mod adapter's resamplers with the released key names, and `offsets()`;
- `adapter`: `XVerseAdapter` (both resamplers and the LoRA pairs), what a converted file rebuilds;
- `spans`: T5 span binding of reference captions to prompt tokens;
- `presets`: the official entry points' settings, the VAE-skip schedule, reference position ids;
- `identity`: which layout boxes are identity references (alpha from the label), and their cap;
- `compose`: one run's state from the references (`build_run`), the experimental `confine_mask`.

Converting and loading the released files: `refcomp_core.released.xverse`.
"""
from .adapter import LoRAPair, XVerseAdapter
from .config import XVerseConfig
from .presets import PRESETS, XVersePreset, parse_schedule, reference_position_ids, schedule_value, vae_skip_steps
from .resampler import TextImageResampler, offsets
from .spans import SpanBinding, SpanNotFoundError, bind_ids, bind_spans, fill_entities, target_word

__all__ = ["LoRAPair", "XVerseAdapter", "XVerseConfig", "PRESETS", "XVersePreset", "parse_schedule",
           "reference_position_ids", "schedule_value", "vae_skip_steps", "TextImageResampler", "offsets",
           "SpanBinding", "SpanNotFoundError", "bind_ids", "bind_spans", "fill_entities", "target_word"]
