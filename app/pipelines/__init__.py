"""Pipelines (docs/pipelines.md; docs/api.md, "Pipelines"): tasks chained with mappings,
rows streaming from step to step, filtered and deduplicated. Read in this order:

    definition.py  the steps as data: parsed from JSON or a TOML/JSON file, names checked
    check.py       the definition against the registry and the backends, before any call:
                   tasks, params, backends, expressions, and where every column comes from
    filters.py     filter expressions, compiled and evaluated in the one sandbox (tasks.rendering)
    dedup.py       exact and MinHash near-duplicate indexes in Redis (shared by a job's workers)
    gate.py        a per-backend gate that lets later steps' calls go first
    execute.py     one row through one step, and a row's tree through every step
    run.py         a whole request: rows in, final rows out as they finish, counters per step
    mermaid.py     the graph, for GET /pipelines/{name}
    catalog.py     the pipeline files of `[pipelines] dir`

app.routes.pipelines serves them; app.jobs.pipelines runs them as durable jobs.
"""
