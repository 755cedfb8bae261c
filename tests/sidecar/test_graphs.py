"""The static decode step (sidecar.graphs) on the real model, run eagerly on CPU: its logits
equal Transformers' own step across capacity buckets, a batcher using it generates the
tokens of Transformers' `generate` while rows join and leave, and batches it does not take
go back untouched. Its capture into CUDA graphs is checked where there is a GPU."""

from __future__ import annotations

import copy
import threading

import pytest
import torch

from sidecar import decode, graphs
from sidecar.batcher import Batcher, Detokenizer, Sequence
from sidecar.kvcache import new_cache
from sidecar.params import SamplingParams

BUCKET = 16  # small capacity buckets: a few steps cross them, the pools stay small in float32


@pytest.fixture
def graphed(plain_model):
    """The session's plain model with the static step attached, detached afterwards."""
    assert graphs.attach(plain_model, capture=False, bucket=BUCKET)
    yield plain_model, getattr(plain_model, decode.ATTRIBUTE)
    delattr(plain_model, decode.ATTRIBUTE)


def prefilled(model, prompts: list[list[int]]):
    """A left-padded batch of `prompts` prefilled by the model: (cache, mask, last ids)."""
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts], device=model.device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=model.device)
    cache = new_cache()
    with torch.inference_mode():
        out = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                    past_key_values=cache, use_cache=True)
    return cache, mask, out.logits[:, -1].argmax(-1, keepdim=True)


def steps_agree(model, step, prompts: list[list[int]], steps: int, atol: float = 1e-4) -> None:
    """`steps` steps of `step` and of the model's forward on two prefills of `prompts`: the same
    logits (to `atol`), argmax and cache."""
    rows = len(prompts)
    caches, masks, last = {}, {}, {}
    for way in ("static", "model"):
        caches[way], masks[way], last[way] = prefilled(model, prompts)
    positions = masks["model"].sum(-1, keepdim=True) - 1
    with torch.inference_mode():
        for _ in range(steps):
            positions = positions + 1
            logits = {}
            for way in ("static", "model"):
                masks[way] = torch.cat([masks[way], masks[way].new_ones((rows, 1))], dim=1)
                if way == "static":
                    logits[way] = step(last[way], masks[way], positions, caches[way])
                else:
                    logits[way] = model(input_ids=last[way], attention_mask=masks[way], position_ids=positions,
                                        past_key_values=caches[way], use_cache=True).logits[:, -1].float()
            assert torch.equal(logits["static"].argmax(-1), logits["model"].argmax(-1))
            assert torch.allclose(logits["static"], logits["model"], rtol=atol, atol=atol)
            last = {way: logits["model"].argmax(-1, keepdim=True) for way in logits}
    for mine, theirs in zip(caches["static"].layers, caches["model"].layers, strict=True):
        assert mine.keys.shape == theirs.keys.shape
        assert torch.allclose(mine.keys, theirs.keys.to(mine.keys.dtype), atol=atol)
        assert torch.allclose(mine.values, theirs.values.to(mine.keys.dtype), atol=atol)


@pytest.mark.parametrize("pool_bytes", [graphs.POOL_BYTES, 0])  # 0: each new pool drops the others
def test_static_steps_equal_transformers_steps_across_buckets(engine, plain_model, pool_bytes):
    step = graphs.GraphedStep(plain_model, capture=False, bucket=BUCKET, pool_bytes=pool_bytes)
    prompts = [engine.encode("The quick brown fox " * n) for n in (1, 3, 2)]  # left-padded to 13 tokens
    steps_agree(plain_model, step, prompts, steps=22)  # through capacities 16, 32 and 48
    assert set(step.pools) == ({16, 32, 48} if pool_bytes else {48})


def reference_tokens(model, engine, prompt: list[int], max_new_tokens: int) -> list[int]:
    """Transformers' own greedy generate, one prompt alone (no padding, no batching)."""
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=engine.batcher.pad_id)
    return out[0, ids.shape[1]:].tolist()


def test_a_batcher_on_the_static_step_generates_transformers_tokens(engine, graphed, monkeypatch):
    # rows of different lengths join together and later, and leave at different steps: each
    # change makes new cache buffers, copied into the pools again
    model, step = graphed
    monkeypatch.setattr(step, "bucket", 8)  # a dozen steps cross one
    takes, take = [], step._take

    def counted(pool, cache, rows, length):
        takes.append(pool.capacity)
        take(pool, cache, rows, length)

    monkeypatch.setattr(step, "_take", counted)
    batcher = Batcher(model, engine.tokenizer, eos_ids=set(engine.batcher.eos_ids), max_batch_size=8)
    questions = ("What is the capital of France?", "Name a colour.", "Why is the sky blue?", "Say hi.")
    prompts = [engine.encode(engine.apply_chat_template([{"role": "user", "content": q}])) for q in questions]
    lengths = (12, 5, 9, 7)
    started = threading.Event()

    def submit(i: int):
        seq = Sequence(prompts[i], SamplingParams(max_new_tokens=lengths[i]), seed=None,
                       detokenizer=Detokenizer(engine.tokenizer, prompts[i]),
                       on_token=(lambda _: started.set()) if i == 0 else None)
        return batcher.submit(seq)

    batcher.start()
    try:
        futures = [submit(0), submit(1)]
        assert started.wait(120)
        futures += [submit(2), submit(3)]
        results = [f.result(timeout=300) for f in futures]
    finally:
        batcher.close()
    for prompt, n, result in zip(prompts, lengths, results, strict=True):
        assert [t.id for t in result.tokens] == reference_tokens(model, engine, prompt, n)[:len(result.tokens)]
    assert step.steps == batcher.steps > 0
    assert len(takes) >= 3 and len(set(takes)) >= 2  # joins and leaves copied in, capacity buckets crossed


def test_batches_it_does_not_take_are_left_untouched(engine, graphed):
    model, step = graphed
    prompts = [engine.encode("Hi")] * (graphs.MAX_BATCH + 1)
    cache, mask, last = prefilled(model, prompts)
    buffer = cache.layers[0]._kbuf
    step_mask = torch.cat([mask, mask.new_ones((len(prompts), 1))], dim=1)
    with torch.inference_mode():
        assert step(last, step_mask, mask.sum(-1, keepdim=True), cache) is None
    assert cache.layers[0]._kbuf is buffer and cache.layers[0].keys.shape[-2] == mask.shape[1]


def test_bf16_steps_are_checked_to_their_rounding(plain_model, monkeypatch):
    # the dtype the step runs in on CUDA: it agrees with Transformers' bf16 step, and a
    # step with a broken rotary embedding does not
    model = copy.deepcopy(plain_model).to(torch.bfloat16)
    assert graphs.attach(model, capture=False, bucket=BUCKET)
    monkeypatch.setattr(graphs, "_rope", lambda x, cos, sin: x)
    assert not graphs._agrees(model, graphs.GraphedStep(model, capture=False, bucket=BUCKET))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_captured_steps_equal_eager_ones_on_cuda(engine):
    from sidecar.loading import load

    model = load(device="cuda", optimize=False).model
    eager = graphs.GraphedStep(model, capture=False, bucket=BUCKET)
    captured = graphs.GraphedStep(model, capture=True, bucket=BUCKET)
    assert graphs._agrees(model, captured)
    prompts = [engine.encode("The quick brown fox " * n) for n in (1, 3, 2)]
    outputs = []
    for step in (eager, captured):
        cache, mask, last = prefilled(model, prompts)
        position = mask.sum(-1, keepdim=True) - 1
        logits = []
        with torch.inference_mode():
            for _ in range(22):  # across capacity buckets: new pools, new graphs
                mask, position = torch.cat([mask, mask.new_ones((3, 1))], dim=1), position + 1
                out = step(last, mask, position, cache)
                assert out is not None
                logits.append(out)
                last = out.argmax(-1, keepdim=True)
        outputs.append(torch.stack(logits))
    assert torch.allclose(outputs[0], outputs[1], atol=1e-2)
    assert torch.equal(outputs[0].argmax(-1), outputs[1].argmax(-1))
