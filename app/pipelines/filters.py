"""Filter expressions: a Jinja2 expression over a row's columns, compiled and evaluated in
the project's one sandbox (tasks.rendering's guarded environment, with its time, loop,
size and recursion bounds). The expression is first parsed as exactly one expression, so
that it cannot close its tag and become a template; it then runs as
`{% if (EXPR) %}1{% endif %}`."""

from __future__ import annotations

from functools import lru_cache

import jinja2
from jinja2 import meta
from jinja2.parser import Parser

from tasks.rendering import TemplateError, compile_user_template, render_user_template, user_environment


@lru_cache(maxsize=256)
def compile_filter(expression: str) -> tuple[jinja2.Template, tuple[str, ...]]:
    """(the compiled test, the columns it reads); TemplateError when it is not one
    expression or does not compile. Call it off the event loop (it may take a while)."""
    env = user_environment()
    try:
        parser = Parser(env, expression, state="variable")
        parser.parse_expression()
        if not parser.stream.current.test("eof"):
            raise TemplateError(f"unexpected {parser.stream.current.value!r} after the expression "
                                f"(a filter is one Jinja2 expression)")
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"expression syntax error: {exc.message}") from None
    except RecursionError:
        raise TemplateError("expression is nested too deeply") from None
    source = "{% if (" + expression + ") %}1{% endif %}"
    try:
        columns = tuple(sorted(meta.find_undeclared_variables(env.parse(source))))
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"expression syntax error: {exc.message}") from None
    return compile_user_template(source, columns), columns


def passes(template: jinja2.Template, columns: tuple[str, ...], row: dict) -> bool:
    """Whether the row passes; TemplateError when evaluating fails (a row error). Blocking
    for up to the sandbox's render timeout: call it off the event loop."""
    return render_user_template(template, {c: row.get(c) for c in columns}) == "1"
