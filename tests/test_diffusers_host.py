"""The diffusers host: rows, windows, removal, Kontext tokens, errors, checkpointing."""
import pytest
import torch

from helpers import features, flux_inputs, random_layout, randomize, tiny_adapter, tiny_flux
from refcomp_core import CheckpointError, Controls, ModelMismatchError, RefCompSession, build_state, parse_layout
from refcomp_core.hosts.diffusers_flux import patch_flux

OPEN = Controls(layout_window=(0.0, 1.0), modulation_window=(0.0, 1.0))


def fg_layout(n=5, seed=3):
    """A random layout whose first instances with a reference are forced FG / BG by override."""
    layout = random_layout(n, seed=seed, caption_only=0.0)
    alphas = [0.9, 0.2, 0.7, 0.1, 0.6] * n
    return parse_layout({**layout.to_dict(), "instances": [{**i.to_dict(), "alpha": a} for i, a in
                                                           zip(layout.instances, alphas)]})


def setup(n=5, seed=3):
    model = tiny_flux()
    adapter = randomize(tiny_adapter(model), scale=0.2)
    layout = fg_layout(n, seed)
    state = build_state(adapter, layout, features(adapter, layout))
    assert state.n_fg >= 2
    return model, adapter, state


@torch.no_grad()
def test_rows_without_state_stay_vanilla_and_batching_is_consistent():
    model, adapter, state = setup()
    inputs = flux_inputs(model, batch=3)
    vanilla = model(**inputs)[0]
    with patch_flux(model, RefCompSession(adapter, [None, state, state], OPEN)):
        mixed = model(**inputs)[0]
    # the uncond row runs vanilla FLUX on its own (batch-size-dependent float rounding only)
    assert torch.allclose(mixed[0], vanilla[0], rtol=0, atol=1e-5 * vanilla.abs().max())
    assert (mixed[1:] - vanilla[1:]).abs().max() > 1e-3
    one = {k: (v[1:2] if torch.is_tensor(v) and v.shape[0] == 3 else v) for k, v in inputs.items()}
    with patch_flux(model, RefCompSession(adapter, state, OPEN)):
        single = model(**one)[0]
    assert torch.allclose(single[0], mixed[1], atol=1e-5)


@torch.no_grad()
def test_outside_both_windows_is_vanilla_and_removal_restores():
    model, adapter, state = setup()
    inputs = flux_inputs(model, batch=1)
    vanilla = model(**inputs)[0]
    session = RefCompSession(adapter, state, Controls(layout_window=(0.0, 0.3), modulation_window=(0.0, 0.5)))
    with patch_flux(model, session):
        session.progress = 0.8
        late = model(**inputs)[0]
        session.progress = 0.1
        early = model(**inputs)[0]
    assert torch.equal(late, vanilla)
    assert (early - vanilla).abs().max() > 1e-3
    assert all("forward" not in b.__dict__ for b in [*model.transformer_blocks, *model.single_transformer_blocks])
    assert torch.equal(model(**inputs)[0], vanilla)


@torch.no_grad()
def test_strength_zero_is_vanilla():
    model, adapter, state = setup()
    inputs = flux_inputs(model, batch=1)
    with patch_flux(model, RefCompSession(adapter, state, Controls(strength=0.0, layout_window=(0, 1)))):
        out = model(**inputs)[0]
    assert torch.equal(out, model(**inputs)[0])


@torch.no_grad()
def test_kontext_tokens_after_the_main_grid():
    model, adapter, state = setup()
    inputs = flux_inputs(model, batch=1)
    extra = 16
    ref_ids = torch.zeros(extra, 3)
    ref_ids[:, 0] = 1
    ref_ids[:, 1] = torch.arange(extra) // 4
    ref_ids[:, 2] = torch.arange(extra) % 4
    inputs["img_ids"] = torch.cat([inputs["img_ids"], ref_ids])
    inputs["hidden_states"] = torch.cat([inputs["hidden_states"], torch.randn(1, extra, 16)], dim=1)
    vanilla = model(**inputs)[0]
    fresh_adapter = tiny_adapter(model)
    fresh_state = build_state(fresh_adapter, random_layout(5, seed=3), features(fresh_adapter, random_layout(5, seed=3)))
    with patch_flux(model, RefCompSession(fresh_adapter, fresh_state, OPEN)) as patch:
        fresh = model(**inputs)[0]
    assert (patch.grid.h, patch.grid.w) == (8, 8)
    assert torch.allclose(fresh, vanilla, atol=1e-5 * vanilla.abs().max())
    with patch_flux(model, RefCompSession(adapter, state, OPEN)):
        out = model(**inputs)[0]
    assert out.shape == vanilla.shape


def test_non_flux_model_is_refused_by_name():
    _, adapter, state = setup()
    with pytest.raises(ModelMismatchError, match="got Linear"):
        with patch_flux(torch.nn.Linear(2, 2), RefCompSession(adapter, state)):
            pass


def test_adapter_for_another_hidden_size_is_refused():
    model, _, _ = setup()
    from diffusers import FluxTransformer2DModel
    from helpers import TINY_FLUX
    other = FluxTransformer2DModel(**{**TINY_FLUX, "num_attention_heads": 4})
    adapter = tiny_adapter(other)
    with pytest.raises(CheckpointError, match="hidden size 64.*hidden size 32"):
        with patch_flux(model, RefCompSession(adapter, None)):
            pass


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        model, adapter, state_unused = setup()
        model.requires_grad_(False)
        if checkpointing:
            model.enable_gradient_checkpointing()
        model.train()
        layout = fg_layout()
        state = build_state(adapter, layout, features(adapter, layout))
        with patch_flux(model, RefCompSession(adapter, state, OPEN)):
            model(**flux_inputs(model, batch=1))[0].pow(2).mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in adapter.parameters() if p.grad is not None]))
    assert grads[0].abs().max() > 0
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-6)


@torch.no_grad()
def test_pathway_switches():
    model, adapter, state = setup()
    inputs = flux_inputs(model, batch=1)
    vanilla = model(**inputs)[0]
    outs = {}
    for layout, modulation in ((True, False), (False, True), (False, False)):
        controls = Controls(layout_window=(0, 1), layout=layout, modulation=modulation)
        with patch_flux(model, RefCompSession(adapter, state, controls)):
            outs[layout, modulation] = model(**inputs)[0]
    assert torch.equal(outs[False, False], vanilla)
    assert (outs[True, False] - vanilla).abs().max() > 1e-3
    assert (outs[False, True] - vanilla).abs().max() > 1e-3
    assert (outs[True, False] - outs[False, True]).abs().max() > 1e-3
