"""POST /jobs/{id}/retry (docs/api.md, "LLM-call cache"): run again, under the same id,
every unit of a finished or cancelled job that has a row with an `error` or no row at all.

One script does it atomically: it drops those units' rows (and what they counted in
`completed`, `failed` and `usage`), puts the job back to `queued` and enqueues their
chunks with the input rows kept since the job was submitted (keys.inputs), marked
`retry` so that workers which saw the job end take it up again. Answers already in the
call cache are not paid again: a unit's calls claim the same numbers as before
(llm_clients.cache). `max_cost_usd` replaces the job's budget.

Tasks whose number of rows per unit varies, and those that run one algorithm over the
whole job (Task.split "whole"), cannot say which rows a unit made: 422.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from . import keys
from .models import JobSpec
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
local size = tonumber(ARGV[2])
for i = 1, #redo, size do
  local units, rows = {}, {}
  for j = i, math.min(i + size - 1, #redo) do
    units[#units + 1] = redo[j]
    if spec.has_rows then rows[#rows + 1] = redis.call('HGET', INPUTS, redo[j]) or '{}' end
  end
  local entry = {'XADD', QUEUE, '*', Q.job, ARGV[3], Q.units, table.concat(units, ','), Q.retry, '1'}
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


async def retry_job(store: JobStore, job_id: str, *, max_cost_usd: float | None, chunk_units: int) -> str:
    """-> 'gone', 'active', 'unsupported', or the job's status after."""
    spec = ""
    if max_cost_usd is not None:
        raw = await store.redis.hget(keys.job(job_id), keys.Field.SPEC)
        if raw is None:
            return "gone"
        spec = JobSpec.model_validate_json(raw).model_copy(update={"max_cost_usd": max_cost_usd}).model_dump_json()
    script = store.redis.register_script(RETRY)
    return await script(keys=[*keys.job_keys(job_id), keys.QUEUE, keys.inputs(job_id)],
                        args=[spec, chunk_units, job_id])
