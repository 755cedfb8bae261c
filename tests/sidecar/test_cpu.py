"""The CPU kernels of `sidecar.cpu` on the real model: every swap made, results equal to
plain Transformers, the dense weights' file pages given back."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from sidecar import blockq, cpu


def test_every_linear_and_norm_is_swapped(engine):
    model = engine.model
    assert not [name for name, m in model.named_modules() if type(m) is torch.nn.Linear]
    linears = [m for m in model.modules() if isinstance(m, cpu.OneDNNLinear)]
    assert len(linears) == 7 * model.config.num_hidden_layers + 1
    head = model.lm_head
    # the tied LM head stays dense and shares the embedding's storage; the rest are packed
    assert not head.weight.is_mkldnn
    assert head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert all(m.weight.is_mkldnn for m in linears if m is not head)
    norms = [m for m in model.modules() if isinstance(m, cpu.FusedRMSNorm)]
    assert len(norms) == 2 * model.config.num_hidden_layers + 1


def test_results_equal_plain_transformers(engine, plain_model):
    # a left-padded batch, as the batcher runs it
    prompts = [engine.apply_chat_template([{"role": "user", "content": q}])
               for q in ("What is the capital of France?", "Name a colour.")]
    encoded = [engine.encode(p) for p in prompts]
    width = max(map(len, encoded))
    ids = torch.tensor([[engine.batcher.pad_id] * (width - len(x)) + x for x in encoded])
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in encoded])
    position = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        got = engine.model(input_ids=ids, attention_mask=mask, position_ids=position, output_hidden_states=True)
        want = plain_model(input_ids=ids, attention_mask=mask, position_ids=position, output_hidden_states=True)
    real = mask.bool()
    assert torch.equal(got.logits[real].argmax(-1), want.logits[real].argmax(-1))
    assert torch.allclose(got.logits[real], want.logits[real], rtol=1e-3, atol=1e-3)
    hidden = torch.nn.functional.cosine_similarity(got.hidden_states[-1][real], want.hidden_states[-1][real], dim=-1)
    assert hidden.min() > 0.99999


def test_packed_weights_leave_the_mapped_file(engine):
    # Packing read the whole safetensors mapping; only the tied embedding's pages may stay.
    embedding = engine.model.get_input_embeddings().weight
    address = embedding.untyped_storage().data_ptr()
    size = rss = None
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if "-" in head[0] and not head[0].endswith(":"):
            start, end = (int(x, 16) for x in head[0].split("-"))
            inside = start <= address < end
            if inside:
                size = end - start
        elif inside and head[0] == "Rss:":
            rss = int(head[1]) * 1024
    if size is None:
        pytest.skip("the weights are not a file mapping here")
    assert size > 4 * embedding.nbytes  # the whole model file
    assert rss <= embedding.nbytes + (16 << 20)


class OffsetRMSNorm(torch.nn.Module):
    """Gemma's kind: scales by 1 + weight, which F.rms_norm does not."""

    def __init__(self, width: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(width))
        self.variance_epsilon = 1e-6

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon) * (1 + self.weight)


def test_only_norms_it_reproduces_are_fused():
    llama = LlamaRMSNorm(8)
    llama.weight.data.normal_()
    model = torch.nn.Sequential(llama, OffsetRMSNorm(8))
    x = torch.randn(2, 3, 8)
    with torch.inference_mode():
        before = model(x)
        assert cpu.fuse_rms_norms(model) == 1
        after = model(x)
    assert isinstance(model[0], cpu.FusedRMSNorm) and isinstance(model[1], OffsetRMSNorm)
    assert torch.allclose(before, after, atol=1e-6)


def test_an_untied_linear_is_packed_and_equal():
    layer = torch.nn.Linear(64, 48)
    model = torch.nn.Sequential(layer)
    x = torch.randn(4, 64)
    with torch.inference_mode():
        want = layer(x)
        assert cpu.use_onednn(model) == 1
        got = model(x)
    assert model[0].weight.is_mkldnn and model[0].bias is not None
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)


def test_gguf_weights_are_kept_in_exact_block_form(engine, plain_model):
    # SmolLM2's GGUF: Q4_1 linears and a Q8_0 embedding, its LM head
    linears = {name: m for name, m in engine.model.named_modules() if isinstance(m, cpu.OneDNNLinear)}
    assert {m.blocks.kind for name, m in linears.items() if name != "lm_head"} == {"q4_1"}
    assert linears["lm_head"].blocks.kind == "q8_0"
    plain = dict(plain_model.named_modules())
    x = torch.randn(blockq.MAX_ROWS, engine.hidden_size)
    with torch.inference_mode():
        for name in ("model.layers.0.self_attn.q_proj", "model.layers.29.mlp.up_proj", "lm_head"):
            want = x @ plain[name].weight.T
            for rows in (1, blockq.MAX_ROWS):  # float32 sums in another order: rounding apart
                got = linears[name].blocks.matmul(x[:rows].contiguous())
                assert torch.allclose(got, want[:rows], rtol=1e-4, atol=1e-4)


def test_a_decode_step_on_block_weights_equals_plain_transformers(engine, plain_model):
    # rows <= MAX_ROWS: every linear of this forward runs on the block kernels
    ids = torch.tensor([engine.encode("The capital of France is")[:blockq.MAX_ROWS]])
    with torch.inference_mode():
        got, want = engine.model(input_ids=ids).logits, plain_model(input_ids=ids).logits
    assert torch.equal(got.argmax(-1), want.argmax(-1))
    assert torch.allclose(got, want, rtol=1e-3, atol=1e-3)


def test_weights_not_block_quantized_keep_float32(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(64, 48))  # random weights: no exact block form
    assert blockq.exact_form(model[0].weight) is None
    assert blockq.exact_forms(model) == {}
    q = torch.randint(0, 16, (48, 2, 32)).float()
    q[..., 0], q[..., 1] = 0, 15  # as ggml quantizes: each block's min and max are its ends
    form = blockq.exact_form((q * 0.5 - 3).view(48, 64))  # q * d + m
    assert form.kind == "q4_1" and torch.equal(form.d.float(), torch.full((48, 2), 0.5))
    assert form.d.dtype == form.m.dtype == torch.float16 and torch.equal(form.m.float(), torch.full((48, 2), -3.0))
    # scales and offsets are kept as float16: an offset float16 cannot hold has no exact form
    m = torch.tensor(-3.0001)
    assert m.half().float() != m
    assert blockq.exact_form((q * 0.5 + m).view(48, 64)) is None
