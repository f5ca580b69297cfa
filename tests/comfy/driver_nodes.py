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


class _T5Clip:
    """A FLUX-like CLIP with word-level T5 ids (EOS 1, pad 0 up to 256, as ComfyUI's T5 tokenizer pads)
    and seeded embeddings per id: enough for XVerse's span binding and its 128-token prompt."""

    def __init__(self, t5_dim: int, pooled_dim: int) -> None:
        self.t5_dim, self.pooled_dim = t5_dim, pooled_dim

    @staticmethod
    def _word_id(word: str) -> int:
        return 10 + int(hashlib.sha256(word.encode()).hexdigest()[:6], 16) % 5000

    def tokenize(self, text):
        ids = [self._word_id(w) for w in text.lower().replace(",", " ").split()] + [1]
        ids += [0] * max(0, 256 - len(ids))
        return {"l": [[(49406, 1.0), (49407, 1.0)]], "t5xxl": [[(i, 1.0) for i in ids]]}

    def encode_from_tokens(self, tokens, return_pooled=False):
        ids = [t[0] for t in tokens["t5xxl"][0]]
        cond = torch.cat([_seeded(f"t5:{i}", self.t5_dim) for i in ids])[None]           # (1, L, t5_dim)
        pooled = _seeded("pooled:" + ",".join(map(str, ids[:8])), self.pooled_dim)
        return (cond, pooled) if return_pooled else cond


class FakeT5Clip:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"t5_dim": ("INT", {"default": 24}), "pooled_dim": ("INT", {"default": 20})}}

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "make"
    CATEGORY = "RefCompTest"

    def make(self, t5_dim, pooled_dim):
        return (_T5Clip(t5_dim, pooled_dim),)


class _PenultimateVision:
    def __init__(self, dim: int, tokens: int) -> None:
        self.dim, self.tokens = dim, tokens

    def encode_image(self, image):
        key = f"vision:{float(image.float().mean()):.6f}:{tuple(image.shape)}"
        return {"penultimate_hidden_states": _seeded(key, self.dim * self.tokens).view(1, self.tokens, self.dim),
                "image_embeds": _seeded(key, self.dim)}


class FakePenultimateVision:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"dim": ("INT", {"default": 12}), "tokens": ("INT", {"default": 5})}}

    RETURN_TYPES = ("CLIP_VISION",)
    FUNCTION = "make"
    CATEGORY = "RefCompTest"

    def make(self, dim, tokens):
        return (_PenultimateVision(dim, tokens),)


class _Vae:
    def encode(self, pixels):
        """(1, H, W, 3) -> (1, 16, H/8, W/8): 8x8 mean pooling spread over 16 channels."""
        x = pixels.permute(0, 3, 1, 2).float()
        pooled = torch.nn.functional.avg_pool2d(x, 8)                                     # (1, 3, H/8, W/8)
        return torch.cat([pooled * (k + 1) / 16 for k in range(6)], dim=1)[:, :16]


class FakeVae:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    RETURN_TYPES = ("VAE",)
    FUNCTION = "make"
    CATEGORY = "RefCompTest"

    def make(self):
        return (_Vae(),)


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
                       "RefCompTestT5Clip": FakeT5Clip, "RefCompTestPenultimateVision": FakePenultimateVision,
                       "RefCompTestVae": FakeVae, "RefCompTestSave": SaveTensor}
