"""The fused decode step (sidecar.decode) on the real model: taken for the embedded GGUF,
its logits and cache equal to Transformers' own step over many steps of a left-padded
batch (buffers growing on the way), and the batches it does not take left to the model."""

from __future__ import annotations

import pytest
import torch

from sidecar import decode
from sidecar.kvcache import new_cache


def prefilled(model, prompts: list[list[int]]):
    """A left-padded batch of `prompts` prefilled by the model: (cache, mask, last ids)."""
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    cache = new_cache()
    with torch.inference_mode():
        out = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                    past_key_values=cache, use_cache=True)
    return cache, mask, out.logits[:, -1].argmax(-1, keepdim=True)


def test_the_embedded_model_gets_a_fused_step(engine):
    assert isinstance(getattr(engine.model, decode.ATTRIBUTE, None), decode.FusedStep)


@pytest.mark.parametrize("rows", [1, 3, decode.MAX_ROWS])
def test_fused_steps_equal_transformers_steps(engine, rows):
    model, fused = engine.model, getattr(engine.model, decode.ATTRIBUTE)
    prompts = [engine.encode(f"Item {i}: " + "the quick brown fox " * (i % 3 + 1)) for i in range(rows)]
    caches, masks, last = {}, {}, {}
    for way in ("fused", "model"):
        caches[way], masks[way], last[way] = prefilled(model, prompts)
    positions = masks["model"].sum(-1, keepdim=True) - 1
    with torch.inference_mode():
        for _ in range(20):  # past the cache buffers' slack: they grow on the way
            positions = positions + 1
            logits = {}
            for way in ("fused", "model"):
                masks[way] = torch.cat([masks[way], masks[way].new_ones((rows, 1))], dim=1)
                if way == "fused":
                    logits[way] = fused(last[way], masks[way], positions, caches[way])
                else:
                    logits[way] = model(input_ids=last[way], attention_mask=masks[way], position_ids=positions,
                                        past_key_values=caches[way], use_cache=True).logits[:, -1]
            assert torch.equal(logits["fused"].argmax(-1), logits["model"].argmax(-1))
            assert torch.allclose(logits["fused"], logits["model"], rtol=1e-3, atol=1e-3)
            last = {way: logits["model"].argmax(-1, keepdim=True) for way in logits}
    for mine, theirs in zip(caches["fused"].layers, caches["model"].layers, strict=True):
        assert mine.keys.shape == theirs.keys.shape
        assert torch.allclose(mine.keys, theirs.keys, atol=1e-4) and torch.allclose(mine.values, theirs.values, atol=1e-4)


def test_batches_it_does_not_take_go_to_the_model(engine, monkeypatch):
    model, fused = engine.model, getattr(engine.model, decode.ATTRIBUTE)
    monkeypatch.setattr(decode, "MAX_ROWS", 1)
    prompts = [engine.encode("Hello there"), engine.encode("Hi")]
    (cache, mask, last), (theirs, _, _) = prefilled(model, prompts), prefilled(model, prompts)
    step_mask = torch.cat([mask, mask.new_ones((2, 1))], dim=1)
    position = mask.sum(-1, keepdim=True)
    with torch.inference_mode():
        assert fused(last, step_mask, position, cache) is None
        assert cache.layers[0].keys.shape[-2] == mask.shape[1]  # untouched
        got = decode.step(model, last, step_mask, position, cache)
        want = model(input_ids=last, attention_mask=step_mask, position_ids=position, past_key_values=theirs,
                     use_cache=True).logits[:, -1]
    assert torch.equal(got, want)
    assert cache.layers[0].keys.shape[-2] == step_mask.shape[1]


def test_a_position_out_of_range_is_refused(engine):
    fused = getattr(engine.model, decode.ATTRIBUTE)
    cache, mask, last = prefilled(engine.model, [engine.encode("Hi")])
    step_mask = torch.cat([mask, mask.new_ones((1, 1))], dim=1)
    with torch.inference_mode(), pytest.raises(ValueError):
        fused(last, step_mask, torch.tensor([[engine.model.config.max_position_embeddings]]), cache)
