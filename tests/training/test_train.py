"""2-step runs of each stage on the tiny dataset: the trainable/frozen split is what
DESIGN §6 says, the export is the one RefComp file, and it runs in the diffusers host."""
from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from refcomp_core import STAGE_MODULES, Controls, RefCompAdapter, RefCompSession, build_state
from refcomp_core.checkpoint import load_adapter, read_info
from training.train import main


def train(workdir, stage: int, *extra: str) -> int:
    sets = [f"stage={stage}", f"output_dir=run{stage}"]
    if stage > 1:
        sets.append(f"init_from=run{stage - 1}/refcomp-stage{stage - 1}.safetensors")
    reset_accelerate()
    argv = ["--config", str(workdir / "config.yaml")]
    for s in sets + list(extra):
        argv += ["--set", s]
    return main(argv)


def reset_accelerate() -> None:
    """accelerate keeps one process-wide state; a real run is one process, tests run several."""
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(reset_partial_state=True)


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> set[str]:
    """Namespaces with at least one tensor that changed."""
    assert before.keys() == after.keys()
    return {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}


def fresh_state(path) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)                                     # build_adapter seeds with cfg.seed (0)
    return RefCompAdapter(read_info(path).config).state_dict()


def test_three_stages_train_exactly_their_modules(workdir):
    assert train(workdir, 1) == 0
    s1 = workdir / "run1" / "refcomp-stage1.safetensors"
    info = read_info(s1)
    assert (info.stage, info.step, info.base_model) == (1, 2, "tiny-flux")
    assert changed(fresh_state(s1), load_file(s1)) == set(STAGE_MODULES[1])

    assert train(workdir, 2) == 0
    s2 = workdir / "run2" / "refcomp-stage2.safetensors"
    assert changed(load_file(s1), load_file(s2)) == set(STAGE_MODULES[2])

    assert train(workdir, 3) == 0
    s3 = workdir / "run3" / "refcomp-stage3.safetensors"
    assert changed(load_file(s2), load_file(s3)) == {"bridge"}
    assert read_info(s3).stage == 3

    # every step logged each loss term; rotation kept checkpoints_total_limit (2) folders
    lines = [json.loads(x) for x in (workdir / "run2" / "losses.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [0, 1]
    assert {"loss/flow", "loss/rpl", "loss/identity", "loss/box", "grad_norm", "lr"} <= set(lines[0])
    assert len(list((workdir / "run2" / "checkpoints").iterdir())) == 2

    # the export loads in the diffusers host and changes the forward (it trained)
    export_runs_in_diffusers_host(workdir, s1)


def export_runs_in_diffusers_host(workdir, path) -> None:
    from diffusers import FluxTransformer2DModel

    from refcomp_core.hosts.diffusers_flux import patch_flux
    from training.config import load_config
    from training.data import read_manifest
    from training.encoders import flux_ids

    transformer = FluxTransformer2DModel.from_pretrained(workdir / "tiny" / "flux", subfolder="transformer")
    adapter, _ = load_adapter(path, hidden_size=32, num_double_blocks=2, num_single_blocks=2)
    sample = read_manifest(load_config(str(workdir / "config.yaml")).data)[0][0]
    r = len(sample.refs)
    cfg = adapter.config
    from refcomp_core import InstanceFeatures
    feats = InstanceFeatures(clip_image=torch.randn(r, cfg.clip_dim), dino=torch.randn(r, cfg.dino_dim),
                             caption=torch.randn(len(sample.layout.instances), cfg.text_dim))
    img_ids, txt_ids = flux_ids((4, 4), 8, torch.device("cpu"))
    inputs = dict(hidden_states=torch.randn(1, 16, 64), encoder_hidden_states=torch.randn(1, 8, 24),
                  pooled_projections=torch.randn(1, 20), timestep=torch.tensor([0.5]), guidance=torch.tensor([3.5]),
                  img_ids=img_ids, txt_ids=txt_ids, return_dict=False)
    with torch.no_grad():
        vanilla = transformer(**inputs)[0]
        session = RefCompSession(adapter, build_state(adapter, sample.layout, feats), Controls(layout_window=(0, 1)))
        with patch_flux(transformer, session):
            composed = transformer(**inputs)[0]
    assert composed.shape == vanilla.shape and bool(torch.isfinite(composed).all())
    assert float((composed - vanilla).abs().max()) > 1e-6


def test_alpha_waits_for_stage_two_when_configured(workdir):
    assert train(workdir, 1, "alpha_from_stage=2", "max_steps=2", "loss.rpl_weight=0", "loss.box_weight=0",
                 "loss.identity_weight=0") == 0
    s1 = workdir / "run1" / "refcomp-stage1.safetensors"
    assert changed(fresh_state(s1), load_file(s1)) == set(STAGE_MODULES[1]) - {"alpha"}


def test_tensorboard_gets_losses_alpha_and_seeded_validation_images(workdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert train(workdir, 1, "max_steps=1", "validate_every=1", "validation_steps=2", "loss.route_weight=0.1") == 0
    events = EventAccumulator(str(workdir / "run1" / "logs" / "refcomp"), size_guidance={"images": 0}).Reload()
    tags = events.Tags()
    assert {"loss/flow", "loss/rpl", "loss/identity", "loss/box", "loss/route", "grad_norm", "lr"} <= set(tags["scalars"])
    assert {"alpha/fg", "alpha/bg"} <= set(tags["histograms"])
    assert {"validation/0", "validation/1"} <= set(tags["images"])


def test_gradient_checkpointing_gives_the_same_update(workdir):
    assert train(workdir, 1, "output_dir=plain") == 0
    assert train(workdir, 1, "output_dir=ckpt", "gradient_checkpointing=true") == 0
    a = load_file(workdir / "plain" / "refcomp-stage1.safetensors")
    b = load_file(workdir / "ckpt" / "refcomp-stage1.safetensors")
    assert changed(fresh_state(workdir / "ckpt" / "refcomp-stage1.safetensors"), b) == set(STAGE_MODULES[1])
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)


def test_stage_one_switches_modulation_off():
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from helpers import features, flux_inputs, random_layout, randomize, tiny_adapter, tiny_flux

    from refcomp_core.hosts.diffusers_flux import patch_flux
    from refcomp_core import Controls

    model = tiny_flux()
    adapter = randomize(tiny_adapter(model))
    from refcomp_core import parse_layout
    doc = random_layout(5, seed=2, caption_only=0.0).to_dict()
    for inst in doc["instances"][::2]:
        inst["alpha"] = 0.9                                   # manual FG
    layout = parse_layout(doc, num_refs=3)
    inputs = flux_inputs(model, batch=1)

    def forward(enabled: bool) -> torch.Tensor:
        state = build_state(adapter, layout, features(adapter, layout))
        assert state.n_fg > 0
        controls = Controls(layout_window=(0, 1), modulation_window=(0, 1), modulation=enabled)
        with torch.no_grad(), patch_flux(model, RefCompSession(adapter, state, controls)):
            return model(**inputs)[0]

    on, off = forward(True), forward(False)
    with torch.no_grad():
        for p in adapter.modulation.parameters():
            p.add_(1.0)
        adapter.single_gate.gate.add_(1.0)
    assert torch.equal(forward(False), off)                   # stage 1: modulation has no effect at all
    assert not torch.allclose(forward(True), on)              # stage 2: it does


def test_bf16_with_checkpointing_tracks_fp32(workdir):
    assert train(workdir, 1, "output_dir=fp32") == 0
    assert train(workdir, 1, "output_dir=bf16", "mixed_precision=bf16", "gradient_checkpointing=true") == 0
    a = [json.loads(x) for x in (workdir / "fp32" / "losses.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (workdir / "bf16" / "losses.jsonl").read_text().splitlines()]
    for x, y in zip(a, b):
        assert abs(x["loss/flow"] - y["loss/flow"]) < 0.05 * x["loss/flow"] and y["nonfinite_skipped"] == 0
    s = workdir / "bf16" / "refcomp-stage1.safetensors"
    assert changed(fresh_state(s), load_file(s)) == set(STAGE_MODULES[1])
    assert all(v.dtype == torch.float32 for v in load_file(s).values())     # the adapter trains in fp32
