"""Tiny random components for the headless compose tests, saved with save_pretrained
so the real local loading code runs. Nothing comes from a hub.

`build_tiny_models(root)` writes:
    root/flux/    a diffusers FluxPipeline folder (transformer, vae, CLIP-L text, T5, tokenizers, scheduler)
    root/clip/    CLIPVisionModelWithProjection + CLIPImageProcessor
    root/dino/    Dinov2Model + BitImageProcessor
    root/adapter_fresh.safetensors, root/adapter_random.safetensors
    root/refs/    three reference images (one RGBA)
"""
from __future__ import annotations

import json
import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from helpers import randomize
from refcomp_core import RefCompAdapter
from refcomp_core.checkpoint import save_adapter
from refcomp_core.hosts.diffusers_flux import config_for

CLIP_TEXT_DIM = 20      # CLIP-L text hidden = FLUX pooled_projection_dim (768 in FLUX.1)
T5_DIM = 24             # T5 d_model = FLUX joint_attention_dim (4096 in FLUX.1)
CLIP_IMAGE_DIM = 12     # CLIP vision projection_dim (768 for CLIP-L)
DINO_DIM = 10           # DINOv2 hidden size (1024 for DINOv2-L)
TOKENIZER_LEN = 16      # CLIP tokenizer model_max_length
T5_LEN = 16             # max_sequence_length the tests pass
TINY_ADAPTER = dict(clip_dim=CLIP_IMAGE_DIM, dino_dim=DINO_DIM, visual_dim=DINO_DIM, text_dim=CLIP_TEXT_DIM,
                    alpha_hidden=16, dense_k=2, fourier_freqs=3, modulation_rank=4, bridge_rank=3, lora_rank=4)


@dataclass(frozen=True)
class TinyModels:
    root: Path
    flux: Path
    clip: Path
    dino: Path
    refs: Path
    adapter_fresh: Path
    adapter_random: Path


def _randomize(module: torch.nn.Module, seed: int, scale: float) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)


def _clip_tokenizer(folder: Path):
    """A byte-level-free BPE with single letters plus a few merges (vocab.json + merges.txt)."""
    from transformers import CLIPTokenizer

    letters = list(string.ascii_lowercase)
    merges = ["t h", "i n", "a n"]
    tokens = ["<|startoftext|>", "<|endoftext|>"] + letters + [f"{c}</w>" for c in letters]
    tokens += [m.replace(" ", "") for m in merges] + [m.replace(" ", "") + "</w>" for m in merges]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = CLIPTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"),
                        model_max_length=TOKENIZER_LEN)
    return tok


def _t5_tokenizer():
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -3.0) for c in string.ascii_lowercase] + [(f"\u2581{c}", -2.5) for c in string.ascii_lowercase]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=T5_LEN)


def _flux_pipeline(folder: Path) -> None:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    tokenizer = _clip_tokenizer(folder.parent / "clip_vocab")
    tokenizer_2 = _t5_tokenizer()
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=CLIP_TEXT_DIM, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=TOKENIZER_LEN, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, projection_dim=CLIP_TEXT_DIM))
    text_encoder_2 = T5EncoderModel(T5Config(vocab_size=len(tokenizer_2), d_model=T5_DIM, d_kv=8, d_ff=32,
                                             num_layers=1, num_heads=2, relative_attention_num_buckets=8))
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=2, num_single_layers=2,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=T5_DIM,
                                         pooled_projection_dim=CLIP_TEXT_DIM, guidance_embeds=True,
                                         axes_dims_rope=(4, 6, 6))
    _randomize(transformer, seed=1, scale=0.08)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(8, 8, 8, 8),
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        layers_per_block=1, norm_num_groups=4, scaling_factor=0.3611, shift_factor=0.1159,
                        use_quant_conv=False, use_post_quant_conv=False)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                                max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
    pipe = FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, transformer=transformer)
    pipe.save_pretrained(folder)


def _clip_vision(folder: Path) -> None:
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(2)
    model = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32,
        patch_size=8, projection_dim=CLIP_IMAGE_DIM))
    model.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)


def _dino(folder: Path) -> None:
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(3)
    model = Dinov2Model(Dinov2Config(hidden_size=DINO_DIM, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2,
                                     image_size=32, patch_size=8))
    model.save_pretrained(folder)
    BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, do_convert_rgb=True,
                      image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(folder)


def _refs(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(folder / "a_cat.png")
    rgba = rng.integers(0, 255, (24, 24, 4), dtype=np.uint8)
    rgba[:12, :, 3] = 0
    Image.fromarray(rgba, mode="RGBA").save(folder / "b_dog.png")
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / "c_tree.jpg", quality=90)
    (folder / "notes.txt").write_text("not an image; ignored")


def tiny_adapter_for(flux_folder: Path) -> RefCompAdapter:
    from diffusers import FluxTransformer2DModel

    transformer = FluxTransformer2DModel.from_pretrained(flux_folder, subfolder="transformer")
    torch.manual_seed(4)
    return RefCompAdapter(config_for(transformer, **TINY_ADAPTER)).eval()


def build_tiny_models(root: Path) -> TinyModels:
    root = Path(root)
    models = TinyModels(root=root, flux=root / "flux", clip=root / "clip", dino=root / "dino", refs=root / "refs",
                        adapter_fresh=root / "adapter_fresh.safetensors",
                        adapter_random=root / "adapter_random.safetensors")
    _flux_pipeline(models.flux)
    _clip_vision(models.clip)
    _dino(models.dino)
    _refs(models.refs)
    adapter = tiny_adapter_for(models.flux)
    save_adapter(models.adapter_fresh, adapter, stage=1, step=0, base_model="tiny-flux")
    save_adapter(models.adapter_random, randomize(adapter, seed=5, scale=0.3), stage=2, step=1,
                 base_model="tiny-flux")
    return models


def tiny_layout(width: int = 64, height: int = 64) -> dict:
    """FG with ref 0 (needs DINOv2), BG with ref 1 (needs CLIP), predicted alpha on ref 2, caption-only."""
    return {"version": 1, "width": width, "height": height, "instances": [
        {"box": [0.0, 0.0, 0.5, 0.5], "ref": 0, "caption": "a cat", "depth": "fg", "alpha": 0.9},
        {"box": [0.25, 0.25, 1.0, 1.0], "ref": 1, "caption": None, "depth": "bg", "alpha": 0.1},
        {"box": [0.5, 0.0, 1.0, 0.5], "ref": 2, "caption": "the tree", "depth": None, "alpha": None},
        {"box": [0.0, 0.5, 0.5, 1.0], "ref": None, "caption": "an ant", "depth": None, "alpha": None},
    ]}
