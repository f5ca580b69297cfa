"""Pathways: the pieces a patched FLUX block is made of (see `base.py`).

- `token_mod.FgModulation`: RefComp's identity pathway (per-token AdaLN offsets + bridge);
- `assemble.AssembleAttn`: RefComp's shared-projection Assemble-Attn (beside the attention);
- `instanceassemble.IABranch`: InstanceAssemble's released branch (after the block).

This package imports nothing at load time, so `refcomp_core.adapter` can import its modules.
"""
