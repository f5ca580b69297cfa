"""Hosts that run the shared block math. ComfyUI's lives in nodes/ (it imports comfy)."""
