"""POST /jobs/{id}/retry (docs/api.md, "LLM-call cache"): run again, under the same id,
every unit of a finished or cancelled job that has a row with an `error` or no row at all.

One script does it atomically: it drops those units' rows (and what they counted in
`completed`, `failed` and `usage`), puts the job back to `queued` and enqueues their
chunks with the input rows kept since the job was submitted (keys.inputs), marked
`retry` so that workers which saw the job end take it up again. Answers already in the
call cache are not paid again: a unit's calls claim the same numbers as before
(llm_clients.cache). `max_cost_usd` replaces the job's budget.

A pipeline job's units are trees of rows (app.jobs.pipelines): `retry_pipeline` plans its
retry on each tree's ledger, which says which rows failed at which step, and goes on from
there (`plan_retry`).

Tasks whose number of rows per unit varies, and those that run one algorithm over the
whole job (Task.split "whole"), cannot say which rows a unit made: their rows take the next
free index when they are stored, and the only record of which unit stored how many (the
units hash) goes when the job ends (scripts.finish). Those are a 422.

Either kind starts a new run of the job (Field.RUN, carried by its queue entries): a
worker's writes still under way from the run before (a batch of units in its writer, a
checkpoint) are refused by the scripts instead of counting twice, and chunks of the run
before still queued are dropped by the workers that read them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from llm_clients import Usage

from ..pipelines.definition import DedupStep, parse
from . import keys
from .models import JobSpec
from .pipelines import LEDGER, WIDTH, Tree, unpacked
from .scripts import PRELUDE
from .store import JobStore

# KEYS: keys.job_keys(id), the queue, the inputs. ARGV: the spec JSON ('' = unchanged),
# units per chunk, the job id. -> 'gone' | 'active' | 'unsupported' | the status after
RETRY = PRELUDE + """
local QUEUE, INPUTS = KEYS[6], KEYS[7]
local status = redis.call('HGET', JOB, F.status)
if not status then return 'gone' end
if active(status) then return 'active' end
if ARGV[1] ~= '' then redis.call('HSET', JOB, F.spec, ARGV[1]) end
local spec = cjson.decode(redis.call('HGET', JOB, F.spec))
local k = spec.per_unit
if k == cjson.null or spec.split == 'whole' then return 'unsupported' end
local function ok(row) return row.error == nil or row.error == cjson.null end
local v = redis.call('HMGET', JOB, F.completed, F.failed, F.input_tokens, F.output_tokens, F.cost_usd,
                     F.cached_calls, F.units_total)
local completed, failed = num(v[1]), num(v[2])
local usage = {num(v[3]), num(v[4]), num(v[5]), num(v[6])}
local redo = {}
for u = 0, num(v[7]) - 1 do
  local stored, again = {}, false
  for j = 0, k - 1 do
    local raw = redis.call('HGET', RESULTS, u * k + j)
    if raw then
      local row = cjson.decode(raw)
      stored[#stored + 1] = {u * k + j, row}
      if not ok(row) then again = true end
    else
      again = true
    end
  end
  if again then
    redo[#redo + 1] = u
    for i, s in ipairs(stored) do
      local row = s[2]
      if ok(row) then completed = completed - 1 else failed = failed - 1 end
      local m = row.metadata
      if i == 1 and type(m) == 'table' and type(m.usage) == 'table' then  -- a unit's usage rides on its first row
        usage[1] = usage[1] - num(m.usage.input_tokens)
        usage[2] = usage[2] - num(m.usage.output_tokens)
        usage[3] = usage[3] - num(m.usage.cost_usd)
        usage[4] = usage[4] - num(m.usage.cached_calls)
      end
      redis.call('HDEL', RESULTS, s[1])
    end
  end
end
if #redo == 0 then return status end
redis.call('HSET', JOB, F.status, S.queued, F.finished_at, '', F.error, '', F.completed, completed,
           F.failed, failed, F.units_done, num(v[7]) - #redo, F.input_tokens, usage[1], F.output_tokens, usage[2],
           F.cost_usd, tostring(math.max(usage[3], 0)), F.cached_calls, usage[4])
redis.call('HDEL', JOB, F.last_error)
for _, key in ipairs({JOB, RESULTS, EVENTS, INPUTS}) do redis.call('PERSIST', key) end
local run = redis.call('HINCRBY', JOB, F.run, 1)
local size = tonumber(ARGV[2])
for i = 1, #redo, size do
  local units, rows = {}, {}
  for j = i, math.min(i + size - 1, #redo) do
    units[#units + 1] = redo[j]
    if spec.has_rows then rows[#rows + 1] = redis.call('HGET', INPUTS, redo[j]) or '{}' end
  end
  local entry = {'XADD', QUEUE, '*', Q.job, ARGV[3], Q.units, table.concat(units, ','), Q.retry, '1', Q.run, run}
  if spec.has_rows then
    entry[#entry + 1] = Q.rows
    entry[#entry + 1] = '[' .. table.concat(rows, ',') .. ']'
  end
  redis.call(unpack(entry))
end
emit(E.progress)
return S.queued
"""


class RetryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_cost_usd: float | None = Field(None, gt=0, allow_inf_nan=False, description=(
        "A new budget for the job's calls (all of them, those before the retry included)."))
    cache: Literal["refresh"] | None = Field(None, description=(
        "`\"refresh\"`: the rows that run again call the backend afresh and overwrite what the "
        "cache holds for them (an answer that could not be parsed is otherwise served again, "
        "as a paid answer is); the job keeps this setting."))

    def spec_update(self) -> dict[str, Any]:
        """What the retry changes in the job's spec."""
        return {k: v for k, v in (("max_cost_usd", self.max_cost_usd), ("cache", self.cache)) if v is not None}


async def retry_job(store: JobStore, job_id: str, *, update: dict[str, Any], chunk_units: int) -> str:
    """-> 'gone', 'active', 'unsupported', or the job's status after. `update`: what changes
    in the job's spec (RetryRequest.spec_update)."""
    spec = ""
    if update:
        raw = await store.redis.hget(keys.job(job_id), keys.Field.SPEC)
        if raw is None:
            return "gone"
        spec = JobSpec.model_validate_json(raw).model_copy(update=update).model_dump_json()
    script = store.redis.register_script(RETRY)
    return await script(keys=[*keys.job_keys(job_id), keys.QUEUE, keys.inputs(job_id)],
                        args=[spec, chunk_units, job_id])


# ---- pipeline jobs ----

@dataclass
class RetryPlan:
    """What POST /jobs/{id}/retry does to a pipeline job (plan_retry), and the job's totals
    after it: those of the units that stay as they are and what the others had banked."""

    units: list[int] = field(default_factory=list)  # the units to run again
    trees: dict[int, str] = field(default_factory=dict)  # unit -> the tree it goes on from
    fresh: list[int] = field(default_factory=list)  # units that start again from their input row
    delete: list[int] = field(default_factory=list)  # result indexes of the rows that run again
    completed: int = 0
    usage: Usage = field(default_factory=Usage)
    counts: dict[str, list[float]] = field(default_factory=dict)


def plan_retry(total: int, names: list[str], ledgers: Mapping[int, dict[str, Any]],
               present: Mapping[int, list[tuple[int, str]]]) -> RetryPlan:
    """Every unit by its ledger (Tree.ledger) and the rows of it the results hold (index, id):

    done, all its rows stored, none failed   stays; counted as it is
    done, all its rows stored, some failed   its failed rows' results go; it goes on from the
                                             rows that failed, each as it entered its step
    not done (a cancel or a budget stopped   goes on from its tree as it was; a give-up's error
      it, or the worker gave up on it)       row goes
    no ledger, or done but rows missing      starts again from its input row (every call of it
      (a cancel came between its last step   is in the call cache); its rows go
      and the storing of its rows)

    The job's totals become the sum over units of what each has banked: `completed` the
    units that stay, `usage` every call made for a unit that stays or goes on (a tree that
    goes on adds its new calls when it is stored), and each step's counters what the units
    that stay or go on added to them (less the failed rows, counted again when they run)."""
    plan = RetryPlan(counts={name: [0] * WIDTH for name in names})

    def bank(usage: Usage, counts: dict[str, list[float]]) -> None:
        plan.usage = plan.usage + usage
        for name, values in counts.items():
            mine = plan.counts.setdefault(name, [0] * WIDTH)
            for i, v in enumerate(values):
                mine[i] += v

    for unit in range(total):
        ledger = ledgers.get(unit)
        rows = present.get(unit, [])
        tree: Tree | None = None
        gone = [index for index, _ in rows]
        if ledger is not None and ledger.get("done"):
            ids = ledger["ids"]
            if sorted(ids) == sorted(row_id for _, row_id in rows):
                usage = Usage(**ledger["base"]) + Usage(**ledger["usage"])
                if not ledger["redo"]:
                    plan.completed += 1
                    bank(usage, ledger["counts"])
                    continue
                tree = Tree({}, base=usage, counts=ledger["counts"], redo=ledger["redo"], kept=list(ids))
                tree.resume(names)
                kept = set(tree.kept)
                gone = [index for index, row_id in rows if row_id not in kept]
        elif ledger is not None:
            tree = Tree.load(ledger)
            tree.resume(names)
        plan.units.append(unit)
        plan.delete.extend(gone)
        if tree is None:
            plan.fresh.append(unit)
        else:
            plan.trees[unit] = tree.dump()
            bank(tree.base, tree.counts)
    return plan


# ARGV: a cursor -> {the next cursor, index, id, index, id, ...}: the ids of the stored rows
# (each starts with its id: Item.final), a batch at a time, without sending the rows
ROW_IDS = """
local r = redis.call('HSCAN', KEYS[1], ARGV[1], 'COUNT', 1000)
local out = {r[1]}
for i = 1, #r[2], 2 do
  out[#out + 1] = r[2][i]
  out[#out + 1] = string.match(r[2][i + 1], '^{"id":"([0-9.]+)"') or ''
end
return out
"""

# KEYS: keys.job_keys(id), the queue, the inputs, the job's dedup indexes. ARGV: the status and
# event seq the plan was made on, the spec ('' = unchanged), completed, failed, input_tokens,
# output_tokens, cost_usd, cached_calls, steps (JSON), units_done, the job id, the ttl of the
# dedup indexes, then counts nd, nt, nf, nc and: nd result indexes to drop, nt pairs (unit,
# tree), nf units that start afresh, nc chunks ("0,1,2"). -> 'gone' | 'active' | 'changed'
# (planned on a state that is no more) | the status after
RETRY_TREES = PRELUDE + """
local QUEUE, INPUTS = KEYS[6], KEYS[7]
local status = redis.call('HGET', JOB, F.status)
if not status then return 'gone' end
if active(status) then return 'active' end
if status ~= ARGV[1] or (redis.call('HGET', JOB, F.event_seq) or '') ~= ARGV[2] then return 'changed' end
if ARGV[3] ~= '' then redis.call('HSET', JOB, F.spec, ARGV[3]) end
local nd, nt, nf, nc = tonumber(ARGV[14]), tonumber(ARGV[15]), tonumber(ARGV[16]), tonumber(ARGV[17])
if nc == 0 then return status end
local a = 18
for i = a, a + nd - 1 do redis.call('HDEL', RESULTS, ARGV[i]) end
a = a + nd
for i = a, a + 2 * nt - 1, 2 do
  redis.call('HSET', CKPT, ARGV[i], ARGV[i + 1])
  redis.call('HSET', INPUTS, '""" + LEDGER + """' .. ARGV[i], ARGV[i + 1])
  redis.call('HDEL', UNITS, ARGV[i])
end
a = a + 2 * nt
for i = a, a + nf - 1 do
  redis.call('HDEL', CKPT, ARGV[i])
  redis.call('HDEL', INPUTS, '""" + LEDGER + """' .. ARGV[i])
  redis.call('HDEL', UNITS, ARGV[i])
end
a = a + nf
redis.call('HSET', JOB, F.status, S.queued, F.finished_at, '', F.error, '', F.completed, ARGV[4], F.failed, ARGV[5],
           F.input_tokens, ARGV[6], F.output_tokens, ARGV[7], F.cost_usd, ARGV[8], F.cached_calls, ARGV[9],
           F.steps, ARGV[10], F.units_done, ARGV[11])
redis.call('HDEL', JOB, F.last_error)
for _, key in ipairs({JOB, RESULTS, EVENTS, INPUTS}) do redis.call('PERSIST', key) end
for i = 8, #KEYS do  -- the dedup indexes live as long as their last claim: long enough for this run
  if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('EXPIRE', KEYS[i], ARGV[13]) end
end
local run = redis.call('HINCRBY', JOB, F.run, 1)
for i = a, a + nc - 1 do
  local rows = {}
  for u in string.gmatch(ARGV[i], '%d+') do rows[#rows + 1] = redis.call('HGET', INPUTS, u) or '{}' end
  redis.call('XADD', QUEUE, '*', Q.job, ARGV[12], Q.units, ARGV[i], Q.retry, '1', Q.run, run,
             Q.rows, '[' .. table.concat(rows, ',') .. ']')
end
emit(E.progress)
return S.queued
"""


async def retry_pipeline(store: JobStore, job_id: str, *, update: dict[str, Any], chunk_units: int) -> str:
    """POST /jobs/{id}/retry for a pipeline job: plan it on the job's ledgers and stored row ids
    (read while the job has ended, so nothing writes them), then apply the plan in one script
    that first checks the job is as it was read (another retry, a delete). -> 'gone', 'active',
    or the job's status after."""
    redis = store.redis
    for _ in range(3):
        status, seq, raw_spec, raw_steps, raw_total = await redis.hmget(
            keys.job(job_id), [keys.Field.STATUS, keys.Field.EVENT_SEQ, keys.Field.SPEC, keys.Field.STEPS,
                               keys.Field.UNITS_TOTAL])
        if status is None or raw_spec is None:
            return "gone"
        if status in keys.ACTIVE:
            return "active"
        spec = JobSpec.model_validate_json(raw_spec)
        assert spec.pipeline is not None
        names = [name for name, _ in json.loads(raw_steps or "[]")]
        ledgers = {int(f[len(LEDGER):]): v
                   async for f, v in redis.hscan_iter(keys.inputs(job_id), match=f"{LEDGER}*", count=1000)}
        present: dict[int, list[tuple[int, str]]] = {}
        row_ids = redis.register_script(ROW_IDS)
        cursor = "0"
        while True:
            got = await row_ids(keys=[keys.results(job_id)], args=[cursor])
            cursor = str(got[0])
            for index, row_id in zip(got[1::2], got[2::2]):
                present.setdefault(int(row_id.split(".")[0]) if row_id else -1, []).append((int(index), row_id))
            if cursor == "0":
                break
        # (off the event loop: ~35 us a unit, seconds for a job of 100,000 rows)
        plan = await asyncio.to_thread(
            lambda: plan_retry(int(raw_total or 0), names, {u: json.loads(v) for u, v in ledgers.items()}, present))
        new_spec = spec.model_copy(update=update).model_dump_json() if update else ""
        steps = [[name, unpacked(plan.counts.get(name, []))] for name in names]
        u = plan.usage
        chunks = [",".join(map(str, plan.units[i:i + chunk_units])) for i in range(0, len(plan.units), chunk_units)]
        dedups = [keys.dedup(job_id, s.name) for s in parse(spec.pipeline["definition"]).steps if isinstance(s, DedupStep)]
        # (failed: 0, every row with an error runs again)
        args: list[Any] = [status, seq or "", new_spec, plan.completed, 0, u.input_tokens, u.output_tokens,
                           repr(max(u.cost_usd, 0.0)), u.cached_calls, json.dumps(steps),
                           int(raw_total or 0) - len(plan.units), job_id, store.config.result_ttl_s,
                           len(plan.delete), len(plan.trees), len(plan.fresh), len(chunks), *plan.delete]
        for unit, tree in plan.trees.items():
            args += [unit, tree]
        args += [*plan.fresh, *chunks]
        script = redis.register_script(RETRY_TREES)
        answer = await script(keys=[*keys.job_keys(job_id), keys.QUEUE, keys.inputs(job_id), *dedups], args=args)
        if answer != "changed":
            return str(answer)
    return "active"
