"""From a converted XVerse file to the block pathway: `build_run` binds each reference's adapter offsets
to the prompt tokens and the pathway reads the adapter's own LoRA; the whole chain on the diffusers host
equals the naive oracle fed with offsets computed here, per token, from the adapter."""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "xverse"))
import xverse_oracle  # noqa: E402
from helpers import TINY_FLUX, flux_inputs  # noqa: E402
from refcomp_core import Controls, RefCompSession  # noqa: E402
from refcomp_core.hosts.diffusers_flux import patch_flux  # noqa: E402
from refcomp_core.released.instanceassemble import TargetSpec  # noqa: E402
from refcomp_core.released.xverse import convert, load_xverse  # noqa: E402
from refcomp_core.xverse.compose import XVerseReference, adapter_loras, build_run  # noqa: E402
from refcomp_core.xverse.presets import PRESETS, reference_position_ids  # noqa: E402
from refcomp_core.xverse.resampler import offsets  # noqa: E402
from refcomp_core.xverse.spans import bind_ids  # noqa: E402
from xv_files import TINY_CONFIG, lora_tensors, write_adapter, write_lora  # noqa: E402

L, H, W, TOKENS = 8, 4, 6, 4                  # prompt tokens, image grid, tokens per reference (cond_size 32)


def test_converted_file_to_pathway_matches_the_oracle(tmp_path, one_thread) -> None:
    from diffusers import FluxTransformer2DModel
    write_adapter(tmp_path / "modulation_adapter")
    modules = lora_tensors(TINY_FLUX, rank=2)
    write_lora(tmp_path / "lora.safetensors", modules)
    out = tmp_path / "xv.safetensors"
    convert(adapter_dir=tmp_path / "modulation_adapter", lora=tmp_path / "lora.safetensors", out=out,
            spec=TargetSpec.from_diffusers_config(TINY_FLUX), in_channels=TINY_FLUX["in_channels"])
    adapter, _ = load_xverse(out)
    loras = adapter_loras(adapter)
    assert loras["0"].deltas["txt_q"] is adapter.lora_pair("transformer_blocks.0.attn.add_q_proj")    # views
    assert "mod" not in loras["s0"].deltas                          # never-active single-block sites dropped

    g = torch.Generator().manual_seed(3)
    refs = [XVerseReference(txt=torch.randn(1, L, TINY_CONFIG["input_text_dim"], generator=g),
                            img=torch.randn(1, 5, TINY_CONFIG["input_image_dim"], generator=g),
                            latents=torch.randn(TOKENS, TINY_FLUX["in_channels"], generator=g), is_id=i == 1)
            for i in range(2)]
    # prompt ids [5 6 7 9 8 ...], reference 0 word [6 7] at caption tokens 1-2, reference 1 word [8] at 0
    binding = bind_ids([5, 6, 7, 9, 8, 4], [[2, 6, 7], [8, 2]], [[6, 7], [8]], length=L)
    preset = PRESETS["cli"].__class__(name="test", lora_scale=1.0, cond_size=32)
    run = build_run(adapter, refs, binding, preset, axes_dim=(4, 6, 6), theta=10000.0, num_double_blocks=2,
                    loras=loras)
    st = run.state
    with torch.no_grad():
        o0, o1 = offsets(adapter, refs[0].txt, refs[0].img), offsets(adapter, refs[1].txt, refs[1].img)
    want_shared = torch.zeros(L, TINY_CONFIG["out_dim"])
    want_block = torch.zeros(2, L, TINY_CONFIG["out_dim"])
    for t, (o, src) in {1: (o0, 1), 2: (o0, 2), 4: (o1, 0)}.items():
        want_shared[t] = o[0][0, src]
        want_block[:, t] = o[1][0, src, :2]
    torch.testing.assert_close(st.delta_shared, want_shared)
    torch.testing.assert_close(st.delta_block, want_block)
    assert st.bound.tolist() == [1, 2, 4] and st.lam.tolist() == [5.0, 3.0]     # weight_ip, weight_id
    ids = torch.cat([reference_position_ids(i, 32) for i in range(2)])
    assert torch.equal(st.ref_latents, torch.cat([r.latents for r in refs]))

    torch.manual_seed(0)
    model = FluxTransformer2DModel(**TINY_FLUX).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    inputs = flux_inputs(model, batch=1, h=H, w=W, txt_len=L)
    session = RefCompSession(None, None, Controls(), xverse=run, t0=1.4)
    ours_model = copy.deepcopy(model)
    with torch.no_grad(), patch_flux(ours_model, session):
        got = ours_model(**inputs)[0]
    peft = {f"transformer.{m}.lora_{x}.weight": t.clone() for m, (a, b, _) in modules.items()
            if not m.endswith(("norm.linear", "proj_mlp")) or m.startswith("transformer_blocks")
            for x, t in (("A", a), ("B", b))}
    oracle = xverse_oracle.load_peft(copy.deepcopy(model), peft)
    xv = dict(delta_shared=want_shared, delta_block=want_block, mask=binding.delta_mask,
              text_cond=binding.text_cond_mask, ref_latents=st.ref_latents, ref_ids=ids, lam=torch.tensor([5.0, 3.0]))
    with torch.no_grad():
        want = xverse_oracle.forward(oracle, inputs, xv)
    assert float((got - want).abs().max()) <= 1e-5, float((got - want).abs().max())
