"""One sandboxed Jinja2 environment for our templates, and a guarded one for the users'.

Ours load from templates/ by name. User templates (the `template` param, file-defined
tasks) are compiled from strings into a GuardedEnvironment: an ImmutableSandboxedEnvironment
with StrictUndefined (no Python internals, no silently missing column) that also bounds
the work one render may do, because a template is a program and a hostile one could
otherwise freeze or exhaust the process:

    time        every hook (call, attribute, operator, filter, loop step, output chunk)
                checks a deadline: RENDER_TIMEOUT_S per render, and the budget of the
                request when one is open (`request_budget`)
    iterations  every `for` iterates through a counter (the parsed tree is rewritten), and
                `range` charges its length: MAX_LOOP_ITERATIONS per render
    size        strings and lists built by `+`, `*`, `~`, `%`, joins, filters and calls, and
                the output, stay under MAX_CHARS; an operation whose result would be larger
                (`'a' * 10**9`, `s|replace('', s)`, `s.join(long_list)`, a width of 10**9)
                is refused before it runs
    numbers     `**` and `*` on integers are refused past MAX_INT_BITS; intercepting them
                also keeps Jinja from folding `9**(9**8)` at compile time
    recursion   calls (macros, recursive loops) nest at most MAX_CALL_DEPTH deep

A thread cannot be killed, so these checks are what stops a runaway render. Callers run
renders off the event loop with `off_loop`, on RENDER_THREADS threads of their own, so a
template running to its limits holds one of those and never a thread that other requests'
validation waits for (app.routes.tasks, tasks.generation, tasks.custom). Every failure is a
TemplateError, which the request turns into a 422 naming the template.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import meta, nodes
from jinja2.compiler import CodeGenerator
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"

RENDER_TIMEOUT_S = 1.0
REQUEST_RENDER_BUDGET_S = 10.0  # all renders of one request's validation together
MAX_LOOP_ITERATIONS = 100_000
MAX_CHARS = 4_000_000  # output, and any string or list built while rendering
MAX_INT_BITS = 64 * 1024
MAX_CALL_DEPTH = 64
YIELD_EVERY_S = 0.001
RENDER_THREADS = 2
_WIDE_PRINTF = re.compile(r"%[^%a-zA-Z]*?(?:\d{7,}|\*)")  # a width or precision of a million or more
_WIDE_FORMAT = re.compile(r"\{[^{}]*:[^{}]*(?:\d{7,}|\{)")  # likewise for str.format, or a nested spec


class TemplateError(ValueError):
    """A template that does not compile, reaches for internals, misses its columns, or
    goes over a limit."""


class RenderLimit(TemplateError):
    pass


_ENV_OPTIONS = dict(undefined=jinja2.StrictUndefined, keep_trailing_newline=False, trim_blocks=True,
                    lstrip_blocks=True, autoescape=False)


@lru_cache(maxsize=1)
def environment() -> ImmutableSandboxedEnvironment:
    return ImmutableSandboxedEnvironment(loader=jinja2.FileSystemLoader(TEMPLATES_DIR), **_ENV_OPTIONS)


@lru_cache(maxsize=256)
def load(name: str) -> jinja2.Template:
    """A built-in template, `templates/<name>.jinja2`."""
    return environment().get_template(f"{name}.jinja2")


def render(name: str, **context: Any) -> str:
    return load(name).render(**context).strip()


# ---- the budget of one render ----

class _Budget:
    __slots__ = ("deadline", "iterations", "depth", "yielded")

    def __init__(self, seconds: float):
        self.yielded = time.monotonic()
        deadline = self.yielded + seconds
        request_deadline = _request_deadline.get()
        self.deadline = deadline if request_deadline is None else min(deadline, request_deadline)
        self.iterations = MAX_LOOP_ITERATIONS
        self.depth = 0

    def tick(self) -> None:
        now = time.monotonic()
        if now > self.deadline:
            raise RenderLimit("template rendering took too long "
                              f"(limit {RENDER_TIMEOUT_S:g} s a row, {REQUEST_RENDER_BUDGET_S:g} s a request)")
        if now - self.yielded > YIELD_EVERY_S:
            # hand the GIL over: the event loop would otherwise wait up to the interpreter's
            # switch interval (5 ms) each time it needs it while a long render runs
            self.yielded = now
            time.sleep(0)

    def iterate(self, n: int = 1) -> None:
        self.iterations -= n
        if self.iterations < 0:
            raise RenderLimit(f"template rendering stopped after {MAX_LOOP_ITERATIONS} loop iterations")
        self.tick()


_budget: ContextVar[_Budget | None] = ContextVar("synthserve_render_budget", default=None)
_request_deadline: ContextVar[float | None] = ContextVar("synthserve_render_deadline", default=None)


@contextmanager
def _limits(seconds: float = RENDER_TIMEOUT_S) -> Iterator[_Budget]:
    budget = _Budget(seconds)
    token = _budget.set(budget)
    try:
        yield budget
    finally:
        _budget.reset(token)


@contextmanager
def request_budget(seconds: float = REQUEST_RENDER_BUDGET_S) -> Iterator[None]:
    """Bound the renders of one request together (its validation renders every row)."""
    token = _request_deadline.set(time.monotonic() + seconds)
    try:
        yield
    finally:
        _request_deadline.reset(token)


def _current() -> _Budget:
    budget = _budget.get()
    if budget is None:  # a template rendered outside render_user_template: still bounded
        raise RenderLimit("user templates render through render_user_template")
    return budget


def _sized(value: Any) -> Any:
    if isinstance(value, (str, list, tuple)) and len(value) > MAX_CHARS:
        raise RenderLimit(f"template built a value of {len(value)} items (limit {MAX_CHARS})")
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise RenderLimit(f"template built an integer over {MAX_INT_BITS} bits")
    return value


def _check_args(args: tuple, kwargs: dict) -> None:
    """Integers passed to a filter or a str method are widths, counts or lengths: a huge one
    is an allocation of that size."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_CHARS:
            raise RenderLimit(f"template passed {value} as an argument (limit {MAX_CHARS})")


def _check_replace(s: Any, old: Any, new: Any, count: Any = None) -> None:
    if not (isinstance(s, str) and isinstance(old, str) and isinstance(new, str)) or len(new) <= len(old):
        return
    n = s.count(old) if old else len(s) + 1
    if isinstance(count, int) and count >= 0:
        n = min(n, count)
    if len(s) + n * (len(new) - len(old)) > MAX_CHARS:
        raise RenderLimit(f"template replace would build more than {MAX_CHARS} characters")


def _check_printf(fmt: Any) -> None:
    if isinstance(fmt, str) and _WIDE_PRINTF.search(fmt):
        raise RenderLimit("template formats with a width or precision that is too large")


def _guard_filter(name: str, func: Any) -> Any:
    skip = 2 if getattr(func, "jinja_pass_arg", None) is not None else 1  # the context, then the value

    @functools.wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _current().tick()
        _check_args(args[skip:], kwargs)
        if name == "replace":
            _check_replace(*args[skip - 1:skip + 3])
        elif name == "format":
            _check_printf(args[skip - 1])
        elif name == "join" and len(args) > skip - 1:  # measured before joining: a list, not a generator
            items = list(args[skip - 1])
            args = (*args[:skip - 1], items, *args[skip:])
            _check_join(args[skip] if len(args) > skip else kwargs.get("d", ""), items)
        return _sized(func(*args, **kwargs))

    return guarded


def _loop_guard(iterable: Any) -> Iterator[Any]:
    budget = _current()
    for item in iterable:
        budget.iterate()
        yield item


def _guarded_range(*args: int) -> range:
    r = range(*args)
    _current().iterate(len(r))
    return r


def _check_join(sep: Any, items: list | tuple | range) -> None:
    if isinstance(sep, str):
        total = len(sep) * max(0, len(items) - 1) + sum(len(i) for i in items if isinstance(i, str))
        if total > MAX_CHARS:
            raise RenderLimit(f"template joins into more than {MAX_CHARS} characters")


class _GuardedCodeGenerator(CodeGenerator):
    def visit_Concat(self, node: nodes.Concat, frame) -> None:
        # `~` cannot be intercepted like the binary operators: its parts are measured before
        # they are joined (a ~ chain of a thousand 4 MB strings would allocate 4 GB first)
        self.write("environment.concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class GuardedEnvironment(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"+", "*", "%", "**"})
    code_generator_class = _GuardedCodeGenerator

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.filters = {name: _guard_filter(name, f) for name, f in self.filters.items()}
        self.filters["_loop_guard"] = _loop_guard
        self.globals = {"range": _guarded_range, "dict": dict, "namespace": self.globals["namespace"],
                        "cycler": self.globals["cycler"], "joiner": self.globals["joiner"]}  # no lipsum(n)

    @staticmethod
    def concat(parts: tuple) -> str:
        _current().tick()
        texts = [str(p) for p in parts]
        _check_join("", texts)
        return "".join(texts)

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = super()._parse(source, name, filename)
        for loop in tree.find_all(nodes.For):  # every iteration passes the counter
            loop.iter = nodes.Filter(loop.iter, "_loop_guard", [], [], None, None, lineno=loop.lineno)
        return tree

    def call_binop(self, context, op: str, left: Any, right: Any) -> Any:
        _current().tick()
        if op == "**" and isinstance(left, int) and isinstance(right, int) and right > 0 \
                and abs(left) > 1 and (abs(left).bit_length() - 1) * right > MAX_INT_BITS:
            raise RenderLimit(f"template computes a power over {MAX_INT_BITS} bits")
        if op == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_CHARS:
                    raise RenderLimit(f"template repeats a value past {MAX_CHARS} items")
            if isinstance(left, int) and isinstance(right, int) \
                    and left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise RenderLimit(f"template computes a product over {MAX_INT_BITS} bits")
        if op == "+" and isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)) \
                and len(left) + len(right) > MAX_CHARS:
            raise RenderLimit(f"template built a value of more than {MAX_CHARS} items")
        if op == "%":
            _check_printf(left)
        return _sized(self.binop_table[op](left, right))

    def getattr(self, obj: Any, attribute: str) -> Any:
        _current().tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _current().tick()
        return super().getitem(obj, argument)

    def wrap_str_format(self, value: Any) -> Any:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        if _WIDE_FORMAT.search(value.__self__):
            raise RenderLimit("template formats with a width that is too large")
        return wrapped

    def call(__self, __context, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 (as Jinja's)
        budget = _current()
        budget.tick()
        if isinstance(getattr(__obj, "__self__", None), str):  # a str method: ljust(10**9), replace(...)
            _check_args(args, kwargs)
            method = getattr(__obj, "__name__", "")
            if method == "replace":
                _check_replace(__obj.__self__, *args[:3])
            elif method == "join" and args:
                args = (list(args[0]), *args[1:])
                _check_join(__obj.__self__, args[0])
        # macros and recursive loops call through here: stop them long before RecursionError,
        # whose 1,000-frame traceback Jinja then rewrites frame by frame
        budget.depth += 1
        try:
            if budget.depth > MAX_CALL_DEPTH:
                raise RenderLimit(f"template calls nest more than {MAX_CALL_DEPTH} deep (a recursive macro or loop?)")
            return _sized(super().call(__context, __obj, *args, **kwargs))
        finally:
            budget.depth -= 1


@lru_cache(maxsize=1)
def _render_threads() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=RENDER_THREADS, thread_name_prefix="synthserve-render")


async def off_loop(func: Callable[..., Any], *args: Any) -> Any:
    """`func(*args)` (user-template work: compiling, validating, rendering) on the render
    threads, with the caller's context (its request budget, its request id)."""
    context = contextvars.copy_context()
    return await asyncio.get_running_loop().run_in_executor(_render_threads(), context.run, func, *args)


@lru_cache(maxsize=1)
def user_environment() -> GuardedEnvironment:
    # users' templates render as distilabel's do: a block tag keeps its line's newline
    return GuardedEnvironment(**{**_ENV_OPTIONS, "trim_blocks": False, "lstrip_blocks": False})


@lru_cache(maxsize=1024)
def compile_user_template(source: str, columns: tuple[str, ...]) -> jinja2.Template:
    """Compile a user-supplied template that must use exactly `columns`. Slow for a long
    template: call it off the event loop."""
    env = user_environment()
    with _limits():
        try:
            tree = env.parse(source)
            used = meta.find_undeclared_variables(tree)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"template syntax error at line {exc.lineno}: {exc.message}") from exc
        except RecursionError:
            raise TemplateError("template is nested too deeply") from None
        unused = [c for c in columns if c not in used]
        if unused:
            raise TemplateError(f"template does not use the column(s) {', '.join(unused)}")
        unknown = sorted(used - set(columns))
        if unknown:
            raise TemplateError(f"template uses {', '.join(unknown)}, which is not among the columns {list(columns)}")
        try:
            return env.from_string(tree)
        except TemplateError:
            raise
        except jinja2.TemplateError as exc:
            raise TemplateError(f"template does not compile: {exc}") from exc
        except (RecursionError, MemoryError, ValueError, TypeError, OverflowError) as exc:
            raise TemplateError(f"template does not compile: {type(exc).__name__}") from None


def render_user_template(template: jinja2.Template, row: dict[str, Any]) -> str:
    """Render within the limits above. Blocking for up to RENDER_TIMEOUT_S: call it off the
    event loop."""
    with _limits() as budget:
        try:
            parts, size = [], 0
            for chunk in template.generate(**row):
                size += len(chunk)
                if size > MAX_CHARS:
                    raise RenderLimit(f"template output is longer than {MAX_CHARS} characters")
                budget.tick()
                parts.append(chunk)
            return "".join(parts)
        except TemplateError:
            raise
        except SecurityError as exc:
            raise TemplateError(f"template is not allowed: {exc}") from exc
        except jinja2.TemplateError as exc:
            raise TemplateError(f"template failed to render: {exc}") from exc
        except RecursionError:
            raise TemplateError("template failed to render: it recursed too deeply") from None
        except MemoryError:
            raise TemplateError("template failed to render: it used too much memory") from None
        except Exception as exc:  # any error of the template's own making (a TypeError, an OverflowError...)
            raise TemplateError(f"template failed to render: {type(exc).__name__}: {str(exc)[:200]}") from None

