"""Released weights of the methods RefComp fuses, converted once into RefComp checkpoints.

- `instanceassemble`: InstanceAssemble's FLUX.1 `layout.pth` + `pytorch_lora_weights.safetensors`;
- `lora_keys`: the LoRA key forms those files may use (PEFT/diffusers, kohya, BFL-fused).

Pickle files are read only here, only with `torch.load(weights_only=True)`, with strict key and
shape checks (DESIGN §7b). The `refcomp convert` command only calls these functions.
"""
