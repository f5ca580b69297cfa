"""refcomp: the user-facing headless package (the `refcomp` command and `compose`).

    from refcomp.compose import compose
    images = compose("layout.json", refs="refs/", flux="FLUX.1-dev/", adapter="refcomp.safetensors",
                     clip="clip-vit-large-patch14/", dino="dinov2-large/", prompt="a picnic")

Modules: cli (console command), compose (sampling), models (local loading),
encoders (CLIP/DINOv2/caption features), refs (reference folder), preview (overlay).
Imports stay lazy: `import refcomp` loads neither diffusers nor transformers.
"""
