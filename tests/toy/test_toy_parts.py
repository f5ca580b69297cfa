"""The toy frozen parts: packing, text and image encoders, save/load, pretraining, sampling."""
import os

import numpy as np
import pytest
import torch

from refcomp.toy.backbone import ToyBackboneConfig, build_backbone
from refcomp.toy.data import instance_features, prompts, scenes, to_tensor
from refcomp.toy.packing import DctCodec, codec_basis, image_ids, pack, unpack
from refcomp.toy.parts import FILES, encoder_dims_of, load_parts, new_parts, save_parts
from refcomp.toy.pretrain import LoopConfig, pretrain_backbone, pretrain_encoder
from refcomp.toy.sample import SampleConfig, generate
from refcomp.toy.text import ToyTextEncoder, ToyTokenizer
from refcomp.toy.vision import ToyImageEncoder, ToyVisionConfig
from refcomp.toy.world import sample_scene, scene_seed
from refcomp_core import RefCompAdapter
from refcomp_core.hosts.diffusers_flux import config_for

SMALL = ToyBackboneConfig(num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
                          axes_dims_rope=(4, 6, 6))


def test_dct_codec_is_orthonormal_and_keeps_toy_scenes():
    basis = codec_basis()
    assert basis.shape == (16, 48) and torch.allclose(basis @ basis.T, torch.eye(16), atol=1e-6)
    flat = torch.rand(2, 3, 1, 1).expand(2, 3, 64, 48)                # flat colour: exactly representable
    tokens = pack(flat)
    assert tokens.shape == (2, 8 * 6, 64)
    assert torch.allclose(unpack(tokens, (8, 6)), flat, atol=1e-5)
    scene = torch.from_numpy(scenes("eval", 0, 1)[0].render()).permute(2, 0, 1)[None]
    err = (unpack(pack(scene), (8, 8)) - scene).abs().mean()
    assert 0 < err < 0.05                                              # lossy, but close on toy renders
    noise = torch.rand(1, 3, 64, 64)
    assert (unpack(pack(noise), (8, 8)) - noise).abs().mean() > 2 * err   # high frequencies are dropped
    one = torch.zeros(1, 3, 64, 64)
    one[0, :, 8 * 2:8 * 3, 8 * 5:8 * 6] = 1.0                   # the patch at token row 2, col 5
    hot = (pack(one)[0] != pack(torch.zeros_like(one))[0]).any(-1).nonzero().squeeze(1)
    assert hot.tolist() == [2 * 8 + 5]
    ids = image_ids((8, 8))
    assert ids[2 * 8 + 5].tolist() == [0, 2, 5]
    codec = DctCodec()                                         # VAE-shaped surface for FLUX-side code
    z = codec.encode(flat * 2 - 1).latent_dist.mode()
    assert z.shape == (2, 16, 16, 12) and torch.allclose(codec.decode(z).sample, flat * 2 - 1, atol=1e-5)
    assert codec.config.scaling_factor == 1.0 and next(codec.parameters()).dtype == torch.float32


def test_text_encoder_positions_padding_and_pooled_captions():
    tok, enc = ToyTokenizer(), ToyTextEncoder()
    ids = tok(["a red striped star", "an orange plain circle on a grey background"], max_length=12).input_ids
    assert ids.shape == (2, 12) and (ids[0, 4:] == 0).all() and (ids != 1).all()
    out = enc(ids)
    assert out.last_hidden_state.shape == (2, 12, 64) and out.pooler_output.shape == (2, 64)
    assert (out.last_hidden_state[0, 4:] == 0).all()
    swapped = enc(tok(["star striped red a"], max_length=12).input_ids)
    assert torch.allclose(swapped.pooler_output, out.pooler_output[:1], atol=1e-6)       # bag of words
    assert not torch.allclose(swapped.last_hidden_state, out.last_hidden_state[:1])      # order is visible
    a, b = enc.encode(tok, ["a red striped star", "a red dotted star"]).pooler_output
    assert (a - b).norm() > 0.1
    with pytest.raises(ValueError, match="max_text_len"):
        enc(torch.ones(1, 100, dtype=torch.long))


def test_image_encoders_have_the_transformers_surface():
    for role in ("clip", "dino"):
        enc = ToyImageEncoder(ToyVisionConfig(role=role))
        x = enc.normalise(torch.rand(3, 3, 64, 64))
        out = enc(pixel_values=x)
        assert out.last_hidden_state.shape == (3, 1 + 64, 64)
        assert out.pooler_output.shape == (3, 64) and out.image_embeds.shape == (3, 64)
        assert torch.allclose(out.last_hidden_state[:, 0], out.pooler_output)
        assert enc.config.image_size // enc.config.patch_size == 8
    with pytest.raises(ValueError, match="role"):
        ToyVisionConfig(role="siglip")


def test_parts_round_trip_through_safetensors(tmp_path):
    parts = new_parts(backbone=SMALL)
    save_parts(str(tmp_path), parts)
    assert sorted(os.listdir(tmp_path)) == sorted(FILES.values())
    back = load_parts(str(tmp_path))
    for a, b in ((parts.transformer, back.transformer), (parts.dino, back.dino), (parts.text, back.text)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert back.backbone_config == SMALL
    assert encoder_dims_of(str(tmp_path)) == parts.encoder_dims() == dict(clip_dim=64, dino_dim=64, text_dim=64,
                                                                           visual_dim=64)
    half = tmp_path / "half"
    save_parts(str(half), parts, dtype=torch.float16)
    assert os.path.getsize(half / FILES["backbone"]) < 0.6 * os.path.getsize(tmp_path / FILES["backbone"])
    with pytest.raises(FileNotFoundError, match="reproduce"):
        load_parts(str(tmp_path / "missing"))


def test_encoder_pretraining_learns_and_resumes_exactly(tmp_path):
    cfg = LoopConfig(steps=3, batch_size=6, learning_rate=3e-3, warmup=1, save_every=1)
    torch.manual_seed(0)
    straight = ToyImageEncoder(ToyVisionConfig(role="clip"))
    torch.manual_seed(0)
    resumed = ToyImageEncoder(ToyVisionConfig(role="clip"))
    pretrain_encoder(straight, cfg, str(tmp_path / "a"))
    pretrain_encoder(resumed, LoopConfig(**{**cfg.__dict__, "steps": 2}), str(tmp_path / "b"))
    torch.manual_seed(0)
    fresh = ToyImageEncoder(ToyVisionConfig(role="clip"))
    pretrain_encoder(fresh, cfg, str(tmp_path / "b"))                 # resumes at step 2 from the file
    for k, v in straight.state_dict().items():
        assert torch.allclose(v, fresh.state_dict()[k], atol=1e-6), k
    assert not torch.allclose(straight.proj.weight, resumed.proj.weight)


def test_backbone_pretraining_step_and_sampling_with_the_real_host(tmp_path):
    parts = new_parts(backbone=SMALL)
    before = {k: v.clone() for k, v in parts.transformer.state_dict().items()}
    losses = pretrain_backbone(parts, LoopConfig(steps=2, batch_size=2, learning_rate=1e-3, warmup=1), str(tmp_path))
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert any(not torch.equal(v, parts.transformer.state_dict()[k]) for k, v in before.items())
    assert (tmp_path / "backbone-train.safetensors").is_file()
    parts.freeze()
    scenes = [sample_scene(scene_seed("test", i)) for i in range(2)]
    caps = [s.caption for s in scenes]
    plain = generate(parts, caps, seeds=[0, 1], config=SampleConfig(steps=2))
    assert plain.shape == (2, 3, 64, 64) and 0 <= float(plain.min()) and float(plain.max()) <= 1
    adapter = RefCompAdapter(config_for(parts.transformer, **parts.encoder_dims(), alpha_hidden=8, dense_k=2,
                                        fourier_freqs=2, modulation_rank=4, bridge_rank=2, lora_rank=4)).eval()
    refs = [[s.reference(k) for k in range(len(s.objects))] for s in scenes]
    kw = dict(seeds=[0, 1], config=SampleConfig(steps=2), layouts=[s.layout() for s in scenes], references=refs)
    fresh = generate(parts, caps, adapter=adapter, **kw)
    assert torch.allclose(fresh, plain, atol=1e-5)                  # init invariant through patch_flux
    with torch.no_grad():
        for gate in adapter.assemble_gate.values():
            gate.gate.fill_(1.0)
    assert (generate(parts, caps, adapter=adapter, **kw) - plain).abs().max() > 1e-3
    feats = instance_features(parts, scenes[0].layout(), refs[0])
    assert feats.clip_image.shape == (len(refs[0]), 64) and feats.caption.shape == (len(refs[0]), 64)
    prompt, pooled = prompts(parts, caps)
    assert prompt.shape == (2, 40, 64) and pooled.shape == (2, 64)
    assert build_backbone(SMALL).config.in_channels == 64
    assert to_tensor([scenes[0].render()]).shape == (1, 3, 64, 64)
