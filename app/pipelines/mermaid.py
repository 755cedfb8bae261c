"""The graph of a pipeline as a Mermaid flowchart (GET /pipelines/{name}): the rows, each
step with what it does and the columns it makes, an LLM fan-out drawn as parallel nodes
joined again, and the final columns."""

from __future__ import annotations

from .check import DedupPlan, FilterPlan, KeepPlan, Plan, TaskPlan

_ESCAPES = {'"': "#quot;", "<": "#lt;", ">": "#gt;", "\n": " "}


def _text(s: str) -> str:
    return "".join(_ESCAPES.get(c, c) for c in s)


def _cols(cols: list[str]) -> str:
    return ", ".join(cols) if cols else "(none)"


def mermaid(plan: Plan) -> str:
    lines = ["flowchart TD", f'    rows[/"rows: {_text(_cols(plan.inputs))}"/]']
    prev = "rows"
    for k, p in enumerate(plan.steps):
        node, name = f"s{k}", _text(p.step.name)
        if isinstance(p, TaskPlan):
            made = [col for col in p.outputs.values()]
            label = f"{name}<br/>{_text(p.task.name)} → {_text(_cols(made))}"
            if p.step.explode:
                label += f"<br/>explode {_text(p.step.explode)}"
            if p.grouped:
                for j, call in enumerate(p.calls):
                    lines.append(f'    {node}_{j}["{name}: {_text(p.task.name)} on {_text(call.backend)}"]')
                    lines.append(f"    {prev} --> {node}_{j}")
                lines.append(f'    {node}(["group → {_text(_cols(made))}"])')
                lines.extend(f"    {node}_{j} --> {node}" for j in range(len(p.calls)))
                prev = node
                continue
            lines.append(f'    {node}["{label}"]')
        elif isinstance(p, FilterPlan):
            lines.append(f'    {node}{{"{name}<br/>filter: {_text(p.step.filter)}"}}')
        elif isinstance(p, DedupPlan):
            d = p.step.dedup
            how = f"minhash ≥ {d.threshold:g}" if d.method == "minhash" else "exact"
            lines.append(f'    {node}[["{name}<br/>dedup {_text(d.column)} ({how})"]]')
        else:
            assert isinstance(p, KeepPlan)
            lines.append(f'    {node}["{name}<br/>keep {_text(_cols(list(p.step.keep)))}"]')
        lines.append(f"    {prev} --> {node}")
        prev = node
    lines.append(f'    out[/"rows out: {_text(_cols(plan.outputs))}"/]')
    lines.append(f"    {prev} --> out")
    return "\n".join(lines)
