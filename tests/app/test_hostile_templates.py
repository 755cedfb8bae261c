"""User templates are programs: one that computes too much, loops too long, builds huge
strings or recurses is a 422 naming the template, found before any LLM call, and it never
holds up other requests (it compiles and renders off the event loop, within limits)."""

from __future__ import annotations

import asyncio

import pytest

from tasks.rendering import TemplateError, compile_user_template, render_user_template

COL = "x" * 600  # the 600-char column

HOSTILE = {
    "folded power": "{{ instruction }}{% set z = 9**(9**8) %}",
    "nested loops": "{% for a in instruction %}{% for b in instruction %}{% for c in instruction %}"
                    "{% endfor %}{% endfor %}{% endfor %}{{ instruction }}",
    "string doubling": "{% set ns = namespace(s=instruction) %}{% for i in range(29) %}"
                       "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}",
    "range(10**9)": "{{ instruction }}{% for i in range(10**9) %}{% endfor %}",
    "recursive macro": "{% macro f(x) %}{{ f(x) }}{% endmacro %}{{ f(instruction) }}",
    "recursive loop": "{% for x in [instruction] recursive %}{{ loop([x]) }}{% endfor %}",
    "format_map": "{{ instruction.format_map() }}",
    "repeat": "{{ instruction * 10**9 }}",
    "wide filter": "{{ instruction|center(1000000000) }}",
    "wide printf": "{{ '%0999999999d'|format(1) }}{{ instruction }}",
    "replace blow-up": "{{ (instruction * 1000)|replace('', instruction * 1000) }}",
    "~ chain": "{% set s = instruction * 6000 %}{{ (" + " ~ ".join(["s"] * 1000) + ")|length }}",
    "join blow-up": "{% set s = instruction * 1666 %}{{ s.join([instruction] * 10000)|length }}",
    "join filter blow-up": "{% set s = instruction * 1666 %}{{ ([instruction] * 10000)|map('upper')|join(s) }}",
}


def body(template: str, rows: int = 1) -> dict:
    return {"rows": [{"instruction": COL}] * rows, "params": {"template": template}}


@pytest.mark.parametrize("template", HOSTILE.values(), ids=HOSTILE.keys())
async def test_hostile_template_is_a_422_before_any_call(service, mock, template):
    r = await service.post("/tasks/text-generation", json=body(template))
    assert r.status_code == 422, r.text
    assert "params.template" in r.json()["detail"]
    assert mock.stats()["requests"] == 0


async def test_health_answers_while_a_template_runs_into_its_time_limit(service, mock):
    # within the iteration and size limits, but long: stopped by the time limit (~1 s)
    slow = "{% for i in range(90000) %}{{ instruction|wordwrap(7)|length }}{% endfor %}"
    hostile = asyncio.create_task(service.post("/tasks/text-generation", json=body(slow, rows=50)))
    await asyncio.sleep(0.05)
    for _ in range(5):  # on the event loop, these would wait for the render to give up
        assert (await service.get("/health")).status_code == 200
        assert not hostile.done()
    r = await hostile
    assert r.status_code == 422 and "too long" in r.json()["detail"]
    assert mock.stats()["requests"] == 0


async def test_a_fair_template_still_renders(service, mock):
    template = "Q: {{ instruction|upper }} {% for w in instruction.split() %}[{{ loop.index }}:{{ w }}]{% endfor %}"
    r = await service.post("/tasks/text-generation",
                           json={"rows": [{"instruction": "a b"}], "params": {"template": template}})
    assert r.status_code == 200, r.text
    assert r.json()["rows"][0]["generation"] == "Echo: Q: A B [1:a][2:b]"


def test_limits_hold_outside_the_service_too():
    template = compile_user_template(HOSTILE["nested loops"], ("instruction",))
    with pytest.raises(TemplateError, match="loop iterations"):
        render_user_template(template, {"instruction": COL})
