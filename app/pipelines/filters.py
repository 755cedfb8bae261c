"""Expressions over a row: a filter step's test, and the computed columns of a `keep`
step given as {column: expression}. Both are one Jinja2 expression, compiled and
evaluated in the project's one sandbox (tasks.rendering's guarded environment, with its
time, loop, size and recursion bounds). The expression is first parsed as exactly one
expression, so that it cannot close its tag and become a template; it then runs as
`{% if (EXPR) %}1{% endif %}` (a test) or `{{ (EXPR) | tojson }}` (a value)."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import jinja2
from jinja2 import meta
from jinja2.parser import Parser

from tasks.rendering import TemplateError, compile_user_template, render_user_template, user_environment

Compiled = tuple[jinja2.Template, tuple[str, ...]]  # the template, the columns it reads


def _compile(expression: str, source: str) -> Compiled:
    env = user_environment()
    try:
        parser = Parser(env, expression, state="variable")
        parser.parse_expression()
        if not parser.stream.current.test("eof"):
            raise TemplateError(f"unexpected {parser.stream.current.value!r} after the expression "
                                f"(one Jinja2 expression is expected)")
        columns = tuple(sorted(meta.find_undeclared_variables(env.parse(source))))
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"expression syntax error: {exc.message}") from None
    except RecursionError:
        raise TemplateError("expression is nested too deeply") from None
    return compile_user_template(source, columns), columns


@lru_cache(maxsize=256)
def compile_filter(expression: str) -> Compiled:
    """TemplateError when it is not one expression or does not compile. Call it off the
    event loop (it may take a while)."""
    return _compile(expression, "{% if (" + expression + ") %}1{% endif %}")


@lru_cache(maxsize=256)
def compile_value(expression: str) -> Compiled:
    return _compile(expression, "{{ (" + expression + ") | tojson }}")


def passes(compiled: Compiled, row: dict) -> bool:
    """Whether the row passes; TemplateError when evaluating fails (a row error). Blocking
    for up to the sandbox's render timeout: call it off the event loop."""
    template, columns = compiled
    return render_user_template(template, {c: row.get(c) for c in columns}) == "1"


def value(compiled: Compiled, row: dict) -> Any:
    """The expression's value on the row (as JSON has it); TemplateError when it fails."""
    template, columns = compiled
    return json.loads(render_user_template(template, {c: row.get(c) for c in columns}))
