"""One sandboxed Jinja2 environment for every template, ours and the users'.

Ours load from templates/ by name; user templates (the `template` param, file-defined
tasks) are compiled from strings. Both render in the same ImmutableSandboxedEnvironment
with StrictUndefined, so a template can neither reach Python internals nor silently drop a
missing column.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import meta
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"


class TemplateError(ValueError):
    """A template that does not compile, reaches for internals, or misses its columns."""


@lru_cache(maxsize=1)
def environment() -> ImmutableSandboxedEnvironment:
    return ImmutableSandboxedEnvironment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=False,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )


@lru_cache(maxsize=256)
def load(name: str) -> jinja2.Template:
    """A built-in template, `templates/<name>.jinja2`."""
    return environment().get_template(f"{name}.jinja2")


def render(name: str, **context: Any) -> str:
    return load(name).render(**context).strip()


@lru_cache(maxsize=1024)
def compile_user_template(source: str, columns: tuple[str, ...]) -> jinja2.Template:
    """Compile a user-supplied template that must use exactly `columns`."""
    env = environment()
    try:
        used = meta.find_undeclared_variables(env.parse(source))
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"template syntax error at line {exc.lineno}: {exc.message}") from exc
    unused = [c for c in columns if c not in used]
    if unused:
        raise TemplateError(f"template does not use the column(s) {', '.join(unused)}")
    unknown = sorted(used - set(columns))
    if unknown:
        raise TemplateError(f"template uses {', '.join(unknown)}, which is not among the columns {list(columns)}")
    # users' templates render as distilabel's do: a block tag keeps its line's newline
    return env.overlay(trim_blocks=False, lstrip_blocks=False).from_string(source)


def render_user_template(template: jinja2.Template, row: dict[str, Any]) -> str:
    try:
        return template.render(**row)
    except SecurityError as exc:
        raise TemplateError(f"template is not allowed: {exc}") from exc
    except jinja2.TemplateError as exc:
        raise TemplateError(f"template failed to render: {exc}") from exc
