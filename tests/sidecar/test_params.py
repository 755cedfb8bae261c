"""The torch-free request and result types."""

from __future__ import annotations

import pytest

from sidecar.params import GenerationResult, InvalidRequest, SamplingParams, StopTrimmer, Token


@pytest.mark.parametrize(("params", "sampling"), [
    (SamplingParams(), False),
    (SamplingParams(do_sample=True), True),
    (SamplingParams(temperature=0.7), True),
    (SamplingParams(temperature=1.0), False),
    (SamplingParams(top_k=20), True),
    (SamplingParams(top_p=0.9), True),
    (SamplingParams(top_p=1.0), False),
    (SamplingParams(temperature=0, do_sample=True), False),  # temperature 0 is greedy
])
def test_when_to_sample(params, sampling):
    assert params.sampling is sampling


@pytest.mark.parametrize("bad", [{"max_new_tokens": 0}, {"temperature": -1}, {"top_p": 0}, {"top_k": -1},
                                 {"repetition_penalty": 0}, {"stop": ("",)}])
def test_invalid_params(bad):
    with pytest.raises(InvalidRequest):
        SamplingParams(**bad)


def test_stop_given_as_a_list_becomes_a_tuple():
    assert SamplingParams(stop=["a"]).stop == ("a",)  # hashable, frozen


@pytest.mark.parametrize(("deltas", "stop", "sent", "flushed"), [
    (["Hello", " world"], (), ["Hello", " world"], ""),
    (["Hello", "\n", "\n", "more"], ("\n\n",), ["Hello", "", "", ""], ""),  # the first newline was held back
    (["Hello", "\n", "x"], ("\n\n",), ["Hello", "", "\nx"], ""),  # ...and released when it was not a stop
    (["ab", "cE", "ND", "zz"], ("END",), ["ab", "c", "", ""], ""),
    (["ab", "cE"], ("END",), ["ab", "c"], "E"),  # ended without the stop: the tail is sent
    (["xSTOPy"], ("STOP", "Y"), ["x"], ""),
])
def test_stop_trimmer(deltas, stop, sent, flushed):
    trimmer = StopTrimmer(stop)
    assert [trimmer.feed(d) for d in deltas] == sent
    assert trimmer.flush() == flushed


def test_completion_text_ends_before_the_stop_sequence():
    result = GenerationResult(text="one two STOP", tokens=[Token(1, "x", -0.1, False)], finish_reason="stop_sequence",
                              input_tokens=3, stop_sequence="STOP")
    assert result.completion_text == "one two " and result.openai_finish_reason == "stop"
    assert result.output_tokens == 1
