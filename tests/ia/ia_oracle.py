"""An independent, naive reference of InstanceAssemble's FLUX forward, written in the tests from
WEIGHTS_COMPAT §1.4-§1.8 and §1.11 (never from RefComp's pathway code, never from upstream code).

It runs a diffusers FluxTransformer2DModel whose LoRA is loaded by peft (`load_lora_adapter`), every
LoRA scale set to 0 globally and set to 1 only around the sub-module calls the branch switches on,
and loops over instances one by one: each box's tokens are projected separately, attention runs per
box through diffusers' own FluxAttention, outputs are scattered and averaged with a count.
The layout net is evaluated directly from the `layout.pth` tensors.

Axis letters: n instances, t box tokens, D width.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F


@contextlib.contextmanager
def lora_on(*modules):
    """Switch the peft LoRA of these sub-modules to scale 1 (from the global 0) for the `with`."""
    for m in modules:
        m.set_scale("ia", 1.0)
    try:
        yield
    finally:
        for m in modules:
            m.set_scale("ia", 0.0)


def load_peft(model, lora_file: str, network_alphas=None):
    """Load the LoRA into `model` with peft and zero every scale (IA's global state)."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from safetensors.torch import load_file

    sd = load_file(lora_file)
    model.load_lora_adapter(sd, adapter_name="ia", prefix="transformer", network_alphas=network_alphas)
    for m in model.modules():
        if isinstance(m, BaseTunerLayer):
            m.set_scale("ia", 0.0)
    return model


def dense_sample(box: tuple[float, float, float, float]) -> torch.Tensor:
    """72 float32 coordinates: the box stored in float32, then x1 + u*step_x, y1 + v*step_y, u outer."""
    b = torch.zeros(4)
    for i, v in enumerate(box):
        b[i] = v
    x1, y1, x2, y2 = b[0].clone(), b[1].clone(), b[2].clone(), b[3].clone()
    step_x, step_y = (x2 - x1) / 5, (y2 - y1) / 5
    out = torch.zeros(72)
    for u in range(6):
        for v in range(6):
            out[(u * 6 + v) * 2] = x1 + u * step_x
            out[(u * 6 + v) * 2 + 1] = y1 + v * step_y
    return out


def tokens_and_centre(points: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, tuple[float, float]]:
    """Token indices (row-major) and layout-token position (row, col) from the first/last point."""
    x1, y1, x2, y2 = (int(points[0] * w), int(points[1] * h), int(points[-2] * w), int(points[-1] * h))
    centre = ((y1 + y2) / 2, (x1 + x2) / 2)
    if x1 == x2:
        x2 = x1 + 1
    if y1 == y2:
        y1, y2 = y1, y1 + 1
    mask = torch.zeros(h, w)
    mask[y1:y2, x1:x2] = 1
    return mask.flatten().nonzero().flatten(), centre


def layout_net(weights: dict, points: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
    """(n, 72) points, (n, text) CLIP pooled -> (n, D) layout tokens, bf16 Fourier features."""
    w = {k: v.float() for k, v in weights.items()}
    freq = (100 ** (torch.arange(8) / 8)).to(torch.bfloat16)
    emb = points.to(torch.bfloat16)[..., None] * freq                               # (n, 72, 8)
    emb = torch.stack([emb.sin(), emb.cos()], dim=-1)                               # (n, 72, 8, 2)
    fourier = emb.permute(0, 2, 3, 1).reshape(points.shape[0], -1)                  # (n, 1152)
    lin = lambda x, name: F.linear(x, w[f"layout_net.{name}.weight"], w[f"layout_net.{name}.bias"])   # noqa: E731
    text = lin(F.silu(lin(pooled.float(), "text_embedder.linear_1")), "text_embedder.linear_2")
    x = torch.cat([text, fourier.float()], dim=-1)
    return lin(F.silu(lin(x, "linears.linear_1")), "linears.linear_2")


def forward(model, layout_weights: dict, boxes: list, pooled: torch.Tensor, inputs: dict, h: int, w: int,
            rows: list[bool], scale: float = 1.0) -> torch.Tensor:
    """The transformer's velocity with InstanceAssemble's branch on the batch rows flagged in `rows`."""
    hs = model.x_embedder(inputs["hidden_states"])
    timestep = inputs["timestep"].to(hs.dtype) * 1000
    guidance = inputs["guidance"].to(hs.dtype) * 1000 if inputs.get("guidance") is not None else None
    temb = model.time_text_embed(timestep, guidance, inputs["pooled_projections"]) if guidance is not None \
        else model.time_text_embed(timestep, inputs["pooled_projections"])
    ehs = model.context_embedder(inputs["encoder_hidden_states"])
    img_ids, txt_ids = inputs["img_ids"], inputs["txt_ids"]
    rope = model.pos_embed(torch.cat([txt_ids, img_ids]))
    points = torch.stack([dense_sample(b) for b in boxes])
    lam0 = layout_net(layout_weights, points, pooled)                               # (n, D)
    per_box = [tokens_and_centre(p, h, w) for p in points]
    ropes = [model.pos_embed(torch.cat([torch.tensor([[0.0, c[0], c[1]]]), img_ids[idx]])) for idx, c in per_box]
    lam = lam0[None].repeat(hs.shape[0], 1, 1)
    nd = len(model.transformer_blocks)
    for i, block in enumerate(model.transformer_blocks):
        ehs, hs = block(hs, ehs, temb, rope)
        if i % 3 == 0:
            hs, lam = _double_branch(block, hs, lam, temb, per_box, ropes, rows, scale)
    for i, block in enumerate(model.single_transformer_blocks):
        ehs, hs = block(hs, ehs, temb, rope)
        if i == 0:
            hs = _single_branch(block, hs, lam, temb, per_box, ropes, rows, scale)
    del nd
    return model.proj_out(model.norm_out(hs, temb))


def _double_branch(block, hs, lam, temb, per_box, ropes, rows, scale):
    attn = block.attn
    with lora_on(block.norm1.linear, block.norm1_context.linear):
        norm_x, g_msa, sh_mlp, sc_mlp, g_mlp = block.norm1(hs, emb=temb)
        norm_l, lg_msa, lsh_mlp, lsc_mlp, lg_mlp = block.norm1_context(lam, emb=temb)
    add = torch.zeros_like(hs)
    count = torch.zeros(hs.shape[:2])
    lay_out = torch.zeros_like(lam)
    for b in range(hs.shape[0]):
        if not rows[b]:
            continue
        for j, (idx, _) in enumerate(per_box):
            with lora_on(attn.to_q, attn.to_k, attn.to_v, attn.add_q_proj, attn.add_k_proj, attn.add_v_proj,
                         attn.to_out[0], attn.to_add_out):
                o_img, o_lay = attn(hidden_states=norm_x[b, idx][None], encoder_hidden_states=norm_l[b, j][None, None],
                                    image_rotary_emb=ropes[j])
            for t, tok in enumerate(idx.tolist()):
                add[b, tok] += scale * block_layout_forward(block)(o_img[0, t])
                count[b, tok] += 1
            lay_out[b, j] = o_lay[0, 0]
    out = hs.clone()
    new_lam = lam.clone()
    for b in range(hs.shape[0]):
        if not rows[b]:
            continue                                    # a row without instances: plain FLUX (no second FFN)
        c = count[b] + (count[b] == 0)
        x = hs[b] + (g_msa[b] * add[b]) / c[:, None]
        with lora_on(block.ff.net[2]):
            ff = block.ff(block.norm2(x) * (1 + sc_mlp[b]) + sh_mlp[b])
        out[b] = x + g_mlp[b] * ff
        lb = lam[b] + lg_msa[b] * lay_out[b]
        with lora_on(block.ff_context.net[2]):
            lff = block.ff_context(block.norm2_context(lb) * (1 + lsc_mlp[b]) + lsh_mlp[b])
        new_lam[b] = lb + lg_mlp[b] * lff
    return out, new_lam


def _single_branch(block, hs, lam, temb, per_box, ropes, rows, scale):
    out = hs.clone()
    for b in range(hs.shape[0]):
        if not rows[b]:
            continue
        add = torch.zeros_like(hs[b])
        count = torch.zeros(hs.shape[1])
        for j, (idx, _) in enumerate(per_box):
            z = torch.cat([lam[b, j][None], hs[b, idx]])[None]                     # (1, 1 + t, D)
            with lora_on(block.norm.linear, block.proj_mlp):
                nz, gate = block.norm(z, emb=temb[b:b + 1])
                mlp = block.act_mlp(block.proj_mlp(nz))
            with lora_on(block.attn.to_q, block.attn.to_k, block.attn.to_v):
                a = block.attn(hidden_states=nz, image_rotary_emb=ropes[j])
            with lora_on(block.proj_out):
                y = gate[:, None] * block.proj_out(torch.cat([a, mlp], dim=2))
            for t, tok in enumerate(idx.tolist()):
                add[tok] += scale * block_layout_forward(block)(y[0, 1 + t])
                count[tok] += 1
        out[b] = hs[b] + add / (count + (count == 0))[:, None]
    return out


def block_layout_forward(block):
    return block.layout_forward
