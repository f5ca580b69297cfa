"""Test-only ComfyUI nodes for the integration driver (a tiny FLUX, random conditioning,
stand-in encoders, a latent saver). Imported only inside ComfyUI by driver.py."""
from __future__ import annotations

import hashlib

import torch

# ComfyUI-side layout of the tiny FLUX (tests/comfy/tiny.py holds the diffusers twin).
TINY_UNET = dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=20, context_in_dim=24,
                 hidden_size=32, mlp_ratio=4.0, num_heads=2, depth=2, depth_single_blocks=2, axes_dim=[4, 6, 6],
                 theta=10000, patch_size=2, qkv_bias=True, guidance_embed=True, txt_ids_dims=[])


def tiny_flux_from_diffusers(path: str):
    """A ComfyUI MODEL built through comfy.supported_models.Flux, weights converted at run
    time from a diffusers-format file with ComfyUI's own key map."""
    import comfy.model_detection
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models
    from safetensors.torch import load_file

    conf = comfy.supported_models.Flux(dict(TINY_UNET))
    conf.set_inference_dtype(torch.float32, None)
    base = conf.get_model({})
    sd = comfy.model_detection.convert_diffusers_mmdit(load_file(path), "")
    missing, unexpected = base.diffusion_model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"tiny FLUX conversion: missing {missing}, unexpected {unexpected}")
    base.diffusion_model.float()
    return comfy.model_patcher.ModelPatcher(base, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def _seeded(text: str, dim: int) -> torch.Tensor:
    seed = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
    return torch.randn(1, dim, generator=torch.Generator().manual_seed(seed))


class TinyFlux:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"path": ("STRING", {"default": ""})}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load"
    CATEGORY = "RefCompTest"

    def load(self, path):
        return (tiny_flux_from_diffusers(path),)


class RandomCond:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0}), "tokens": ("INT", {"default": 5})}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "make"
    CATEGORY = "RefCompTest"

    def make(self, seed, tokens):
        g = torch.Generator().manual_seed(seed)
        return ([[torch.randn(1, tokens, TINY_UNET["context_in_dim"], generator=g),
                  {"pooled_output": torch.randn(1, TINY_UNET["vec_in_dim"], generator=g), "guidance": 3.5}]],)


class _Vision:
    def __init__(self, dim: int, name: str) -> None:
        self.dim, self.name = dim, name

    def encode_image(self, image):
        key = f"{self.name}:{float(image.float().mean()):.6f}:{tuple(image.shape)}"
        return {"image_embeds": _seeded(key, self.dim), "last_hidden_state": None}


class FakeVision:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"dim": ("INT", {"default": 12}), "name": ("STRING", {"default": "clip"})}}

    RETURN_TYPES = ("CLIP_VISION",)
    FUNCTION = "make"
    CATEGORY = "RefCompTest"

    def make(self, dim, name):
        return (_Vision(dim, name),)


class _Clip:
    def __init__(self, dim: int) -> None:
        self.dim = dim

    def tokenize(self, text):
        return {"l": text, "t5xxl": text}

    def encode_from_tokens(self, tokens, return_pooled=False):
        assert tokens["t5xxl"] == "", "RefComp must not spend T5 on captions"
        return None, _seeded("cap:" + tokens["l"], self.dim)


class FakeClip:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"dim": ("INT", {"default": 8})}}

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "make"
    CATEGORY = "RefCompTest"

    def make(self, dim):
        return (_Clip(dim),)


class SaveTensor:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"path": ("STRING", {"default": ""})},
                "optional": {"samples": ("LATENT",), "image": ("IMAGE",)}}

    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True
    CATEGORY = "RefCompTest"

    def save(self, path, samples=None, image=None):
        from safetensors.torch import save_file
        t = samples["samples"] if samples is not None else image
        save_file({"t": t.float().contiguous()}, path)
        return ()


NODE_CLASS_MAPPINGS = {"RefCompTestTinyFlux": TinyFlux, "RefCompTestCond": RandomCond,
                       "RefCompTestVision": FakeVision, "RefCompTestClip": FakeClip,
                       "RefCompTestSave": SaveTensor}
