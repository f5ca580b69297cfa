"""XVerse's identity pathway on the diffusers host against the naive peft oracle (float32), alone
and composed with the InstanceAssemble pathway."""
from __future__ import annotations

import copy

import pytest
import torch

import xverse_oracle
from helpers import TINY_FLUX, flux_inputs
from refcomp_core import Controls, RefCompSession
from refcomp_core.hosts.diffusers_flux import patch_flux
from refcomp_core.pathways.xverse import XVerseScales, XVerseState, xverse_loras
from refcomp_core.rope import rope_from_ids
from refcomp_core.session import XVerseRun

XV_FLUX = {**TINY_FLUX, "num_layers": 3, "num_single_layers": 2}
L, H, W, REFS, PER = 8, 4, 6, 2, 4                     # text tokens, image grid, references x tokens each


def _modules(d: int) -> dict[str, tuple[int, int]]:
    mods = {"x_embedder": (XV_FLUX["in_channels"], d)}
    dbl = {"norm1.linear": (d, 6 * d), "norm1_context.linear": (d, 6 * d), "attn.to_out.0": (d, d),
           "attn.to_add_out": (d, d), "ff.net.2": (4 * d, d), "ff_context.net.2": (4 * d, d),
           **{f"attn.{n}": (d, d) for n in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj")}}
    sgl = {"norm.linear": (d, 3 * d), "proj_mlp": (d, 4 * d), "proj_out": (5 * d, d),
           **{f"attn.{n}": (d, d) for n in ("to_q", "to_k", "to_v")}}
    for b in range(XV_FLUX["num_layers"]):
        mods.update({f"transformer_blocks.{b}.{m}": s for m, s in dbl.items()})
    for b in range(XV_FLUX["num_single_layers"]):
        mods.update({f"single_transformer_blocks.{b}.{m}": s for m, s in sgl.items()})
    return mods


@pytest.fixture(scope="module")
def setup():
    from diffusers import FluxTransformer2DModel
    torch.manual_seed(0)
    model = FluxTransformer2DModel(**XV_FLUX).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    d = XV_FLUX["num_attention_heads"] * XV_FLUX["attention_head_dim"]
    lora = {m: (torch.randn(3, i, generator=g) * 0.2, torch.randn(o, 3, generator=g) * 0.2)
            for m, (i, o) in _modules(d).items()}
    peft = {f"transformer.{m}.lora_{x}.weight": t.clone() for m, (a, b) in lora.items()
            for x, t in (("A", a), ("B", b))}
    mask = torch.zeros(L, dtype=torch.bool)
    mask[[2, 3, 5]] = True
    text_cond = torch.zeros(L, REFS, dtype=torch.bool)
    text_cond[[2, 3], 0] = True
    text_cond[5, 1] = True
    ref_ids = torch.zeros(REFS * PER, 3)
    for j in range(REFS):
        for t in range(PER):
            ref_ids[j * PER + t, 1:] = torch.tensor([t // 2 - 2 * (j + 1), t % 2 - 2 * (j + 1)], dtype=torch.float)
    xv = dict(delta_shared=torch.randn(L, d, generator=g) * mask[:, None], mask=mask, text_cond=text_cond,
              delta_block=torch.randn(XV_FLUX["num_layers"], L, d, generator=g) * mask[None, :, None],
              ref_latents=torch.randn(REFS * PER, XV_FLUX["in_channels"], generator=g), ref_ids=ref_ids,
              lam=torch.tensor([3.0, 5.0]))
    inputs = flux_inputs(model, batch=2, h=H, w=W, txt_len=L)
    return model, lora, peft, xv, inputs


def _run(model, lora, xv, scales: XVerseScales, rows=None, t0=1.4, **session_kw):
    """t0: the run's first timestep (the inputs' t is 0.7: half-way, outside both VAE-skip intervals)."""
    state = XVerseState(delta_shared=xv["delta_shared"], delta_block=xv["delta_block"],
                        bound=torch.nonzero(xv["mask"]).flatten(), text_cond=xv["text_cond"],
                        ref_latents=xv.get("ref_latents"),
                        ref_rope=rope_from_ids(xv["ref_ids"], (4, 6, 6), 10000.0),
                        lam=xv["lam"], tokens_per_ref=PER, confine=xv.get("confine"))
    run = XVerseRun(state=state, loras=xverse_loras({m: (a, b, 1.0) for m, (a, b) in lora.items()}), scales=scales)
    session = RefCompSession(session_kw.pop("adapter", None), session_kw.pop("states", None),
                             session_kw.pop("controls", Controls()), xverse=run, xverse_rows=rows, t0=t0, **session_kw)
    m = copy.deepcopy(model)
    with torch.no_grad(), patch_flux(m, session):
        return m(**session_kw.pop("inputs", {}) or _INPUTS[0])[0]


_INPUTS: list = [None]


@pytest.mark.parametrize("scales", [XVerseScales(), XVerseScales(global_scale=0.85)], ids=["cli", "demo"])
def test_matches_oracle(setup, scales, one_thread) -> None:
    model, lora, peft, xv, inputs = setup
    _INPUTS[0] = inputs
    got = _run(model, lora, xv, scales)
    ref_model = xverse_oracle.load_peft(copy.deepcopy(model), peft)
    with torch.no_grad():
        want = xverse_oracle.forward(ref_model, inputs, xv, g=scales.global_scale)
        vanilla = model(**inputs)[0]
        no_refs = xverse_oracle.forward(ref_model, inputs, xv, g=scales.global_scale, refs=False)
    assert float((want - vanilla).abs().max()) > 1e-2 and float((want - no_refs).abs().max()) > 1e-3
    assert float((got - want).abs().max()) <= 1e-5, float((got - want).abs().max())


def test_skip_steps_drop_the_references_only(setup, one_thread) -> None:
    """At t >= 0.95 t0 the references are absent, the offsets and the LoRA stay (the oracle without R)."""
    model, lora, peft, xv, inputs = setup
    _INPUTS[0] = inputs
    got = _run(model, lora, xv, XVerseScales(), t0=float(inputs["timestep"][0]) / 0.97)
    ref_model = xverse_oracle.load_peft(copy.deepcopy(model), peft)
    with torch.no_grad():
        want = xverse_oracle.forward(ref_model, inputs, xv, refs=False)
    assert float((got - want).abs().max()) <= 1e-5


def test_uncond_rows_are_plain_flux(setup, one_thread) -> None:
    model, lora, peft, xv, inputs = setup
    _INPUTS[0] = inputs
    got = _run(model, lora, xv, XVerseScales(), rows=[False, True])
    with torch.no_grad():
        vanilla = model(**inputs)[0]
    torch.testing.assert_close(got[0], vanilla[0], rtol=0, atol=1e-5)
    assert float((got[1] - vanilla[1]).abs().max()) > 1e-2


def test_lambda_one_with_every_token_bound_is_plain_union_attention(setup, one_thread) -> None:
    """lambda = 1 and no text mask: the single blocks' bias vanishes and it is plain attention over
    [txt ; img ; R] (WEIGHTS_COMPAT §4.3)."""
    model, lora, peft, xv, inputs = setup
    _INPUTS[0] = inputs
    plain = dict(xv, lam=torch.ones(REFS), text_cond=torch.ones(L, REFS, dtype=torch.bool))
    got = _run(model, lora, plain, XVerseScales())
    ref_model = xverse_oracle.load_peft(copy.deepcopy(model), peft)
    with torch.no_grad():
        want = xverse_oracle.forward(ref_model, inputs, plain, plain_union=True)
        biased = xverse_oracle.forward(ref_model, inputs, xv)
    assert float((got - want).abs().max()) <= 1e-5
    assert float((got - biased).abs().max()) > 1e-3


def test_no_references_leave_only_the_lora_altered_base_path(setup, one_thread) -> None:
    model, lora, peft, xv, inputs = setup
    _INPUTS[0] = inputs
    state_free = _run(model, lora, {**xv, "delta_shared": xv["delta_shared"] * 0,
                                    "delta_block": xv["delta_block"] * 0, "ref_latents": None}, XVerseScales())
    ref_model = xverse_oracle.load_peft(copy.deepcopy(model), peft)
    with torch.no_grad():
        want = xverse_oracle.forward(ref_model, inputs, {**xv, "delta_shared": xv["delta_shared"] * 0,
                                                         "delta_block": xv["delta_block"] * 0}, refs=False)
        vanilla = model(**inputs)[0]
    assert float((state_free - want).abs().max()) <= 1e-5
    assert float((state_free - vanilla).abs().max()) > 1e-3                   # the LoRA alone changes FLUX


def test_confine_matches_oracle(setup, one_thread) -> None:
    """RefComp's experimental option: image tokens outside reference j's box never see its tokens in the
    single blocks (the naive oracle's mask, row by row); every other part stays XVerse's."""
    model, lora, peft, xv, inputs = setup
    _INPUTS[0] = inputs
    confine = torch.zeros(H * W, REFS, dtype=torch.bool)
    confine[: W * 2, 0] = True                                       # reference 0: the top two rows
    confine[torch.arange(H * W) % W >= 3, 1] = True                  # reference 1: the right half
    confined = dict(xv, confine=confine)
    got = _run(model, lora, confined, XVerseScales())
    ref_model = xverse_oracle.load_peft(copy.deepcopy(model), peft)
    with torch.no_grad():
        want = xverse_oracle.forward(ref_model, inputs, confined)
        free = xverse_oracle.forward(ref_model, inputs, xv)
    assert float((want - free).abs().max()) > 1e-3                   # the mask acts
    assert float((got - want).abs().max()) <= 1e-5, float((got - want).abs().max())
    with pytest.raises(ValueError, match="the mask covers 23 image tokens"):
        _run(model, lora, dict(xv, confine=confine[:-1]), XVerseScales())
