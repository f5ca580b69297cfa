"""Benchmark: Assemble-Attn branch, InstanceAssemble-style per-instance vs ours (DESIGN §7).

Both branches compute the same thing for one double block (the script checks they
agree): for every instance i, attention over [l_i ; tokens of box_i] with (base +
LoRA) q/k/v, QK-norm and RoPE, then the (LoRA'd) out-projection and output gate,
averaged per token over overlapping boxes.

- per-instance (the peer): every box projects its own tokens with q/k/v, and every
  box-token goes through the out-projection (sum of box tokens ~ 5x the image at 50 boxes).
  The instance tokens' own projections are batched over the boxes (a favour to the peer).
- ours (`refcomp_core.pathways.assemble.AssembleAttn`): reuses the joint attention's base
  q/k/v (computed anyway, so not timed), adds only the LoRA deltas on covered tokens,
  loops attention per box and runs the out-projection once per covered token.

Each is timed against one vanilla diffusers FluxTransformerBlock forward, interleaved.

    python bench/assemble_attention.py            # D 3072, 64x64 grid, 512 text, 18 and 50 boxes
    python bench/assemble_attention.py --quick --heads 2 --head-dim 16   # smoke test

Axis letters: b batch, N image tokens, t tokens of a box, n instances, h heads, c head channels, D width.
"""
from __future__ import annotations

import logging

import torch

from common import block_bench, box_tokens, report, time_interleaved
from refcomp_core.blocks.attention import attention, split_heads
from refcomp_core.blocks.views import DoubleBlockView
from refcomp_core.pathways.assemble import AssembleAttn, lora_add, prepare_heads
from refcomp_core.pathways.base import DoubleContext, JointAttention
from refcomp_core.pathways.token_mod import FgModulation, token_mod
from refcomp_core.rope import Rope

log = logging.getLogger(__name__)
Tensor = torch.Tensor


def instance_inputs(view: DoubleBlockView, call: AssembleAttn, txt_base: Tensor, txt_y: Tensor | None,
                    b: int) -> Tensor:
    """The instance tokens after the text-stream AdaLN (mod(y_i) for FG, the base for BG).  -> (b, n, D)"""
    st = call.state
    d = txt_base.shape[-1] // 6
    mods = txt_base[:, None].expand(b, st.n, 6 * d)
    if txt_y is not None:
        mods = mods.index_copy(1, st.fg_ids, txt_y)
    lt = st.layout_tokens.to(txt_base.dtype)[None].expand(b, -1, -1)
    return view.txt_norm1(lt) * (1 + mods[..., d:2 * d]) + mods[..., :d]


def per_instance_branch(view: DoubleBlockView, call: AssembleAttn, xm: Tensor, img_rope: Rope, ln: Tensor,
                        boxes: list[Tensor]) -> Tensor:
    """InstanceAssemble-style: each box projects its own tokens.  xm: (b, N, D), ln: (b, n, D),
    boxes[i]: (t_i,) image token indices of box i -> (b, N, D) (the branch output averaged over the
    boxes covering each token, zero elsewhere)."""
    lora = call.adapter.lora[str(call.block)]
    gate = call.adapter.assemble_gate[str(call.block)]
    heads = view.heads
    lq, lk, lv = lora_add(lora, ("txt_q", "txt_k", "txt_v"), ln, view.txt_qkv(ln))
    lq, lk = prepare_heads(lq, lk, view.txt_qk_norm, heads, call.centre_rope)
    lv = split_heads(lv, heads)                                                 # (b, n, h, c)
    acc = torch.zeros_like(xm)
    count = xm.new_zeros(xm.shape[1])
    for i, tok in enumerate(boxes):
        x = xm[:, tok]                                                           # (b, t, D)
        q, k, v = lora_add(lora, ("img_q", "img_k", "img_v"), x, view.img_qkv(x))   # per-box projections
        q, k = prepare_heads(q, k, view.img_qk_norm, heads, img_rope[tok])
        out = attention(torch.cat([lq[:, i:i + 1], q], 1), torch.cat([lk[:, i:i + 1], k], 1),
                        torch.cat([lv[:, i:i + 1], split_heads(v, heads)], 1))[:, 1:]   # (b, t, D)
        out = lora_add(lora, ("img_out",), out, [view.img_proj(out)])[0]          # per box-token out-projection
        acc.index_add_(1, tok, gate(out) * call.strength)
        count.index_add_(0, tok, torch.ones_like(tok, dtype=count.dtype))
    return acc / count.clamp(min=1)[None, :, None]


def main(argv: list[str] | None = None) -> None:
    b = block_bench(__doc__.split("\n")[0], argv)
    args, dims, dtype, block, view, rope, diff_rope = b.args, b.dims, b.dtype, b.block, b.view, b.rope, b.diff_rope
    img, txt, vec, device = b.img, b.txt, b.vec, b.device
    img_rope = rope[dims.text:]
    L = dims.text
    for n in args.boxes:
        state, block_call = b.call_for(n)
        call = block_call.assemble
        boxes = [call.index.asm_cov[p] for p in call.index.asm_pos]          # per-run index lists, not timed
        mod = next((p for p in block_call.pathways if isinstance(p, FgModulation)), None)
        ctx = DoubleContext(view=view, vec=vec, rope=rope, txt_len=L)
        with torch.inference_mode():
            # inputs both branches share: the per-token modulated image input and the text AdaLN
            img_mod = token_mod(view.img_mod, vec, mod.img_modulation(ctx) if mod else None)
            ctx.txt_base = txt_base = token_mod(view.txt_mod, vec, None).base
            txt_y = view.txt_mod(ctx.fg_y) if ctx.fg_y is not None else None
            xm = img_mod.modulate(view.img_norm1(img), 0, 1)
            joint = JointAttention(xm, *view.img_qkv(xm))      # the joint attention's, computed anyway
            ln = instance_inputs(view, call, txt_base, txt_y, 1)
            ours = call.beside_attention(ctx, joint)[1]
            peer = per_instance_branch(view, call, xm, img_rope, ln, boxes)[:, call.index.asm_cov]
            err = ((ours - peer).abs().max() / peer.abs().max()).item()
        total, covered = box_tokens(state, block_call)
        log.info("%d boxes: %d box tokens (%.2fx the image), %d covered tokens, %d FG; "
                 "max |ours - per-instance| / max |per-instance| = %.1e", n, total, total / dims.grid ** 2,
                 covered, state.n_fg, err)
        if err > (1e-3 if dtype == torch.float32 else 5e-2):
            raise RuntimeError(f"ours and the per-instance branch disagree at {n} boxes (relative error {err:.2e})")
        times = time_interleaved({
            "vanilla": lambda: block(img, txt, vec, diff_rope),
            "per_instance": lambda: per_instance_branch(view, call, xm, img_rope, ln, boxes),
            "ours": lambda: call.beside_attention(ctx, joint),
        }, repeats=args.repeats, warmup=args.warmup, device=device)
        log.info("%d boxes, median times: %s", n, times.medians())
        report(f"per_instance/vanilla_block boxes={n}", times, "per_instance", "vanilla")
        report(f"ours/vanilla_block boxes={n}", times, "ours", "vanilla")
        report(f"speedup per_instance/ours boxes={n}", times, "per_instance", "ours", "target >= 4x at 50")


if __name__ == "__main__":
    main()
