"""Choosing the next token of every sequence in a batch, each with its own parameters.

Penalties are applied row by row (only rows that ask for them); temperature, top-k and
top-p are applied to all sampling rows at once; each sampling row draws from its own
seeded generator, so a seeded request gives the same tokens whatever it is batched with
(up to the float noise of batched matmuls).
"""

from __future__ import annotations

import math
from collections.abc import Sequence as Seq
from typing import Protocol

import torch

from .params import SamplingParams


class Row(Protocol):
    params: SamplingParams
    generator: torch.Generator | None

    def seen_ids(self) -> list[int]: ...  # prompt + output, for the repetition penalty
    def output_ids(self) -> list[int]: ...


def choose(logits: torch.Tensor, rows: Seq[Row]) -> tuple[list[int], list[float], list[list[tuple[int, float]]]]:
    """Next token id and its logprob for each row of `logits` (batch, vocab), and the row's
    `top_n_tokens` most likely (id, logprob), best first, of the distribution it was drawn from."""
    logits = logits.float()
    for i, row in enumerate(rows):
        _penalise(logits, i, row)
    ids = logits.argmax(dim=-1)
    logprobs = torch.log_softmax(logits, dim=-1)
    sampled = [i for i, row in enumerate(rows) if row.params.sampling]
    if sampled:
        index = torch.tensor(sampled, device=logits.device)
        probs = _warp(logits.index_select(0, index), [rows[i].params for i in sampled]).softmax(dim=-1)
        for j, i in enumerate(sampled):
            ids[i] = torch.multinomial(probs[j], 1, generator=rows[i].generator)[0]
        logprobs[index] = probs.log()
    chosen = logprobs.gather(1, ids[:, None])[:, 0]
    return ids.tolist(), chosen.tolist(), _tops(logprobs, rows)


def _tops(logprobs: torch.Tensor, rows: Seq[Row]) -> list[list[tuple[int, float]]]:
    most = max(row.params.top_n_tokens for row in rows)
    if not most:
        return [[] for _ in rows]
    values, indices = logprobs.topk(min(most, logprobs.shape[-1]), dim=-1)
    values, indices = values.tolist(), indices.tolist()
    # tokens a grammar or top-k/top-p ruled out (logprob -inf) are no alternatives
    return [[(t, v) for t, v in zip(indices[i][:row.params.top_n_tokens], values[i], strict=False) if v > -math.inf]
            for i, row in enumerate(rows)]


def _penalise(logits: torch.Tensor, i: int, row: Row) -> None:
    p = row.params
    if p.repetition_penalty not in (None, 1.0):
        seen = torch.tensor(row.seen_ids(), device=logits.device)
        score = logits[i, seen]
        logits[i, seen] = torch.where(score < 0, score * p.repetition_penalty, score / p.repetition_penalty)
    if p.frequency_penalty or p.presence_penalty:
        out = row.output_ids()
        if out:
            counts = torch.bincount(torch.tensor(out, device=logits.device), minlength=logits.shape[-1])
            logits[i] -= (p.frequency_penalty or 0.0) * counts + (p.presence_penalty or 0.0) * (counts > 0)


def _warp(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """Temperature, then top-k, then top-p (the order of Transformers' warpers)."""
    device = logits.device
    temperature = torch.tensor([p.temperature or 1.0 for p in params], device=device)
    logits = logits / temperature[:, None]
    ks = [p.top_k or 0 for p in params]
    if any(ks):
        kmax = min(max(ks), logits.shape[-1])
        top = logits.topk(kmax, dim=-1).values
        kth = top.gather(1, torch.tensor([[min(k, kmax) - 1 if k else kmax - 1] for k in ks], device=device))
        kth[torch.tensor([k == 0 for k in ks], device=device)] = -float("inf")
        logits = logits.masked_fill(logits < kth, -float("inf"))
    ps = [p.top_p if p.top_p is not None else 1.0 for p in params]
    if any(p < 1.0 for p in ps):
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        before = probs.cumsum(dim=-1) - probs  # mass of the better tokens; the best is always kept
        drop = before > torch.tensor(ps, device=device)[:, None]
        drop[torch.tensor([p >= 1.0 for p in ps], device=device)] = False
        logits = logits.masked_fill(drop.scatter(1, order, drop), -float("inf"))
    return logits
