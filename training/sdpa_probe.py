"""Minimal probes of cuDNN attention under gradient checkpointing (issue 13), one case per process:
an illegal memory access poisons the CUDA context, so each case runs alone and reports one line.

    python -m training.sdpa_probe sdpa_layout_ckpt --device cuda
    -> "PROBE sdpa_layout_ckpt ok 1.23 s" (exit 0) or "PROBE sdpa_layout_ckpt error RuntimeError: ..." (exit 1)

Cases, from bare to the FLUX pattern (FLUX.1 shapes: 24 heads x 128, 4096 image + 512 text tokens, bf16):
- sdpa: cuDNN attention forward + backward;
- sdpa_ckpt: the same inside a non-reentrant checkpoint (the forward is recomputed in backward);
- sdpa_layout_ckpt: projections -> head-major views -> attention -> token-major -> out-projection,
  checkpointed, as a FLUX block lays its tensors out;
- block_ckpt: one random diffusers FluxTransformerBlock, checkpointed, torch's default backends
  with cuDNN attention enabled.
The first three force cuDNN attention (a missing kernel is reported as an error, not a crash).
With --device cpu the cases run tiny with the math backend: this checks the plumbing only.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch.utils.checkpoint import checkpoint

Tensor = torch.Tensor
CASES = ("sdpa", "sdpa_ckpt", "sdpa_layout_ckpt", "block_ckpt")
FLUX = dict(heads=24, head_dim=128, tokens=4096 + 512)
TINY = dict(heads=2, head_dim=16, tokens=80)


def _attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    return F.scaled_dot_product_attention(q, k, v)


def _layout(x: Tensor, proj: list[torch.nn.Linear], heads: int) -> Tensor:
    """x (1, l, D) -> q, k, v as head-major views -> attention -> token-major -> out-projection."""
    q, k, v = (rearrange(p(x), "b l (h c) -> b h l c", h=heads) for p in proj[:3])
    return proj[3](rearrange(_attention(q, k, v), "b h l c -> b l (h c)"))


def run_case(case: str, device: torch.device) -> None:
    """Forward + backward of one case; raises what the device raises."""
    size = FLUX if device.type == "cuda" else TINY
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    h, c, n = size["heads"], size["head_dim"], size["tokens"]
    g = torch.Generator(device=device).manual_seed(0)
    rand = lambda *shape: torch.randn(*shape, generator=g, device=device, dtype=dtype, requires_grad=True)  # noqa: E731
    if case == "block_ckpt":
        from diffusers.models.transformers.transformer_flux import FluxTransformerBlock
        block = FluxTransformerBlock(h * c, h, c).to(device, dtype)
        img, txt, temb = rand(1, n - n // 9, h * c), rand(1, n // 9, h * c), rand(1, h * c)
        rope = (torch.ones(n, c, device=device), torch.zeros(n, c, device=device))
        out = checkpoint(block, img, txt, temb, rope, use_reentrant=False)
        loss = out[0].float().square().mean() + out[1].float().square().mean()
    elif case == "sdpa_layout_ckpt":
        proj = [torch.nn.Linear(h * c, h * c, device=device, dtype=dtype) for _ in range(4)]
        loss = checkpoint(_layout, rand(1, n, h * c), proj, h, use_reentrant=False).float().square().mean()
    else:
        q, k, v = rand(1, h, n, c), rand(1, h, n, c), rand(1, h, n, c)
        call: Callable[..., Tensor] = _attention
        out = checkpoint(call, q, k, v, use_reentrant=False) if case == "sdpa_ckpt" else call(q, k, v)
        loss = out.float().square().mean()
    loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("case", choices=CASES)
    p.add_argument("--device", default="cuda")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    from torch.nn.attention import SDPBackend, sdpa_kernel
    forced = [SDPBackend.CUDNN_ATTENTION if device.type == "cuda" else SDPBackend.MATH]
    t0 = time.perf_counter()
    try:
        if args.case == "block_ckpt":
            if device.type == "cuda":
                torch.backends.cuda.enable_cudnn_sdp(True)
            run_case(args.case, device)
        else:
            with sdpa_kernel(forced):
                run_case(args.case, device)
    except Exception as err:         # the report needs the message, whatever the device raised
        print(f"PROBE {args.case} error {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
        return 1
    print(f"PROBE {args.case} ok {time.perf_counter() - t0:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
