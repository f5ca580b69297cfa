"""The patched single-stream block (DESIGN §3.2): no Assemble-Attn; FG image tokens
get per-token modulation from vec + g_s * alpha_i * shared_i (g_s zero-init).

Axis letters: b batch, L text tokens, N image tokens, g FG instances, D width.
"""
from __future__ import annotations

from typing import Callable

import torch

from .double import BlockCall
from .token_mod import token_mod
from .views import SingleBlockView

Tensor = torch.Tensor


def single_block(view: SingleBlockView, x: Tensor, vec: Tensor, call: BlockCall, txt_len: int,
                 body: Callable[[Tensor], Tensor]) -> Tensor:
    """x: (b, L+N, D) = [txt | img], vec: (b, D) -> (b, L+N, D).

    body: the host block's own modulated-input -> pre-gate-output path (b, L+N, D).
    """
    st, idx = call.state, call.index
    gate = call.adapter.single_gate.gate[call.block]
    y = None
    if call.mod_on and st.n_fg and (torch.is_grad_enabled() or bool(gate != 0)):
        scale = (call.strength * gate * st.alpha_fg).to(vec.dtype)[None, :, None]    # (1, g, 1)
        y = vec[:, None] + scale * st.shared.to(vec.dtype)[None]                     # (b, g, D)
    cov = idx.mod_cov + txt_len if y is not None else None
    mod, _, _ = token_mod(view.mod, vec, y, cov, idx.mod_w, 3)
    out = body(mod.modulate(view.norm(x), 0, 1))
    return x + mod.gate(out, 2)
