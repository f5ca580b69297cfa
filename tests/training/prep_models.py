"""Tiny random SAM, Depth Anything and BLIP folders for the prepare-data test."""
from __future__ import annotations

from pathlib import Path

import torch

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "thing", "cat", "on", "the", "table"]


def tiny_sam(folder: Path) -> Path:
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor

    torch.manual_seed(0)
    cfg = SamConfig(
        vision_config=dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, image_size=64, patch_size=16,
                           output_channels=8, mlp_dim=32, global_attn_indexes=[0], window_size=2, num_pos_feats=4),
        prompt_encoder_config=dict(hidden_size=8, image_size=64, patch_size=16, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, mlp_dim=16,
                                 iou_head_hidden_dim=8))
    SamModel(cfg).save_pretrained(folder)
    SamProcessor(SamImageProcessor(size={"longest_edge": 64}, pad_size={"height": 64, "width": 64},
                                   mask_size={"longest_edge": 16})).save_pretrained(folder)
    return folder


def tiny_depth(folder: Path) -> Path:
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    torch.manual_seed(1)
    backbone = Dinov2Config(hidden_size=16, num_hidden_layers=4, num_attention_heads=2, mlp_ratio=2, image_size=28,
                            patch_size=14, out_indices=[1, 2, 3, 4], reshape_hidden_states=False)
    cfg = DepthAnythingConfig(backbone_config=backbone.to_dict(), reassemble_hidden_size=16,
                              neck_hidden_sizes=[8, 8, 8, 8], fusion_hidden_size=8, head_hidden_size=4, patch_size=14)
    DepthAnythingForDepthEstimation(cfg).save_pretrained(folder)
    DPTImageProcessor(size={"height": 28, "width": 28}, keep_aspect_ratio=False, ensure_multiple_of=14,
                      do_pad=False).save_pretrained(folder)
    return folder


def tiny_blip(folder: Path) -> Path:
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, \
        BlipProcessor

    torch.manual_seed(2)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(WORDS))
    tokenizer = BertTokenizer(str(folder / "vocab.txt"))
    cfg = BlipConfig(text_config=dict(vocab_size=len(WORDS), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, encoder_hidden_size=16, max_position_embeddings=32,
                                      bos_token_id=2, sep_token_id=3, pad_token_id=0),
                     vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, image_size=32, patch_size=8), projection_dim=16)
    BlipForConditionalGeneration(cfg).save_pretrained(folder)
    BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
                  tokenizer=tokenizer).save_pretrained(folder)
    return folder
