"""The Lua scripts that change a job in Redis. Each runs atomically, so "store the rows +
count them + log the events + acknowledge the chunk" is one step: a worker killed at any
point leaves either all of it or none of it, and the HSETNX on the units hash makes a
unit that two workers both finished count once.

Job scripts take KEYS = keys.job_keys(id) (+ the queue for SAVE), and every name they use
comes from keys.py (the PRELUDE's tables)."""

from __future__ import annotations

from .keys import LUA_NAMES

# Every job script starts with this: the names of keys.py (F.<field>, S.<status>,
# E.<event kind>, SNAPSHOT) and the steps the scripts share.
PRELUDE = LUA_NAMES + """
local JOB, UNITS, RESULTS, EVENTS, CKPT = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local function num(x) return tonumber(x) or 0 end

local function emit(kind, index)
  local seq = redis.call('HINCRBY', JOB, F.event_seq, 1)
  if kind == E.row then
    redis.call('XADD', EVENTS, seq .. '-0', E.kind, E.row, E.index, index)
    return
  end
  local v = redis.call('HMGET', JOB, unpack(SNAPSHOT))
  local args, snap = {'XADD', EVENTS, seq .. '-0', E.kind, kind}, {}
  for i, name in ipairs(SNAPSHOT) do
    args[#args + 1] = name
    args[#args + 1] = v[i] or ''
    snap[name] = v[i]
  end
  redis.call(unpack(args))
  redis.call('HSET', JOB, F.progress_count, num(snap[F.completed]) + num(snap[F.failed]))
end

local function progress(now_ms)
  local v = redis.call('HMGET', JOB, F.completed, F.failed, F.progress_count, F.progress_ms)
  if num(v[1]) + num(v[2]) ~= num(v[3]) and num(now_ms) - num(v[4]) >= PROGRESS_INTERVAL_MS then
    redis.call('HSET', JOB, F.progress_ms, now_ms)
    emit(E.progress)
  end
end

local function active(status) return status == S.queued or status == S.running end

-- Whether a write of run `run` (a chunk's, Entry.RUN) belongs to the job's current run: a
-- retry starts a new one, and what a worker of the run before still had on its way (a batch
-- in its writer, a checkpoint) must not count in it
local function current(run) return (redis.call('HGET', JOB, F.run) or '0') == run end

local function finish(status, now_iso, ttl, err)
  redis.call('HSET', JOB, F.status, status, F.finished_at, now_iso)
  if err then redis.call('HSET', JOB, F.error, err) end
  emit(E.done)
  redis.call('DEL', UNITS, CKPT)
  for _, key in ipairs({JOB, RESULTS, EVENTS, JOB .. P.inputs}) do redis.call('EXPIRE', key, ttl) end
end
"""

# ARGV: now_iso, now_ms -> status after ('' when the job is gone)
START = PRELUDE + """
local status = redis.call('HGET', JOB, F.status)
if not status then return '' end
if status == S.queued then
  redis.call('HSET', JOB, F.status, S.running, F.started_at, ARGV[1], F.progress_ms, ARGV[2])
  emit(E.progress)
  return S.running
end
return status
"""

# KEYS[6] = the queue. ARGV: entry ('' = none), ack ('1'), now_ms, now_iso, ttl, group,
# drop checkpoints ('1'), n units, the units as one blob (one argument, not five per row:
# redis-py packs each argument in Python), the chunk's run. The blob:
#   "<unit> <k> <input_tokens> <output_tokens> <cost_usd> <cached_calls>\n" then k times
#   "<index or -> <failed 0|1> <bytes>\n<row JSON>"       (index "-" = the next free one)
# A unit stored before (by a worker that was thought dead) counts nothing: the job's usage
# is that of its stored rows; nor do units of a run a retry has replaced (the entry is
# acknowledged all the same). -> the job's status after ('' when it is gone)
SAVE = PRELUDE + """
local entry, ack = ARGV[1], ARGV[2] == '1'
local function release()
  if ack and entry ~= '' then
    redis.call('XACK', KEYS[6], ARGV[6], entry)
    redis.call('XDEL', KEYS[6], entry)
  end
end
local status = redis.call('HGET', JOB, F.status)
if not status then release(); return '' end
if not active(status) or not current(ARGV[10]) then release(); return status end
if status == S.queued then
  redis.call('HSET', JOB, F.status, S.running, F.started_at, ARGV[4])
end
local drop, blob, pos, done = ARGV[7] == '1', ARGV[9], 1, 0
-- a pipeline job counts units (input rows whose tree is done) as completed, and rows with an error as failed
local trees = (redis.call('HGET', JOB, F.pipeline) or '') ~= ''
-- counters summed here and written once: a few commands per chunk instead of ~6 per row
local tokens_in, tokens_out, cost, cached, completed, failed_rows = 0, 0, 0, 0, 0, 0
local seq0 = num(redis.call('HGET', JOB, F.event_seq))
local seq = seq0
for _ = 1, tonumber(ARGV[8]) do
  local _, stop, unit, k, t_in, t_out, c, hits =
    string.find(blob, '^(%d+) (%d+) (%d+) (%d+) (%S+) (%d+)\\n', pos)
  pos = stop + 1
  local fresh = redis.call('HSETNX', UNITS, unit, k) == 1
  if fresh then
    tokens_in, tokens_out = tokens_in + tonumber(t_in), tokens_out + tonumber(t_out)
    cost, cached = cost + tonumber(c), cached + tonumber(hits)
  end
  for _ = 1, tonumber(k) do
    local _, head, index, failed, size = string.find(blob, '^(%S+) (%d) (%d+)\\n', pos)
    pos = head + 1 + tonumber(size)
    if fresh then
      if index == '-' then index = redis.call('HINCRBY', JOB, F.rows_out, 1) - 1 end
      if redis.call('HSETNX', RESULTS, index, string.sub(blob, head + 1, pos - 1)) == 1 then
        if failed == '1' then failed_rows = failed_rows + 1 elseif not trees then completed = completed + 1 end
        seq = seq + 1  -- emit(E.row, index), its sequence number kept here
        redis.call('XADD', EVENTS, seq .. '-0', E.kind, E.row, E.index, index)
      end
    end
  end
  if fresh then
    done = done + 1
    if trees then completed = completed + 1 end
    if drop then redis.call('HDEL', CKPT, unit) end
  end
end
if seq ~= seq0 then redis.call('HSET', JOB, F.event_seq, seq) end
for field, n in pairs({[F.input_tokens] = tokens_in, [F.output_tokens] = tokens_out, [F.cached_calls] = cached,
                       [F.completed] = completed, [F.failed] = failed_rows}) do
  if n ~= 0 then redis.call('HINCRBY', JOB, field, string.format('%d', n)) end
end
if cost ~= 0 then redis.call('HINCRBYFLOAT', JOB, F.cost_usd, string.format('%.12f', cost)) end
release()
local units_done = redis.call('HINCRBY', JOB, F.units_done, done)
if units_done >= num(redis.call('HGET', JOB, F.units_total)) then
  local v = redis.call('HMGET', JOB, F.completed, F.failed, F.variable)
  if v[3] == '1' then redis.call('HSET', JOB, F.total, num(v[1]) + num(v[2])) end
  finish(S.completed, ARGV[4], ARGV[5], false)
  return S.completed
end
progress(ARGV[3])
return S.running
"""

# ARGV: now_ms. A progress event if progress changed and the last one is old enough.
FLUSH_PROGRESS = PRELUDE + """
if redis.call('HGET', JOB, F.status) == S.running then progress(ARGV[1]) end
return 1
"""

# ARGV: status (cancelled | failed), now_iso, ttl, error ('' = none) -> status after
FINISH = PRELUDE + """
local status = redis.call('HGET', JOB, F.status)
if not status then return '' end
if not active(status) then return status end
finish(ARGV[1], ARGV[2], ARGV[3], ARGV[4] ~= '' and ARGV[4] or false)
return ARGV[1]
"""

# KEYS = keys.job_keys(id). ARGV: unit, its checkpoint, the chunk's run. Written only while
# the job is there (a deleted job's keys are not brought back) and in the same run.
CHECKPOINT = PRELUDE + """
if redis.call('EXISTS', JOB) == 1 and current(ARGV[3]) then redis.call('HSET', CKPT, ARGV[1], ARGV[2]) end
return 1
"""

# KEYS[1] = the job, KEYS[2] = one of its hashes. ARGV: field, value. A write that must not
# bring back the keys of a job deleted meanwhile (last_error).
HSET_IF_JOB = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[2], ARGV[1], ARGV[2]) end
return 1
"""

# KEYS[1] = the queue. ARGV: group, consumer, idle_ms ('' = reset to 0), ids...
# Touches (or, with idle_ms, marks idle so that others reclaim them now) the entries this
# consumer still owns; -> the ids another worker has taken over. (Ids no longer pending
# were acknowledged: finished, by this worker or another.)
TOUCH = """
local owned, lost = {}, {}
for i = 4, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] then
    if p[1][2] == ARGV[2] then owned[#owned + 1] = ARGV[i] else lost[#lost + 1] = ARGV[i] end
  end
end
if #owned > 0 then
  local args = {'XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0}
  for _, id in ipairs(owned) do args[#args + 1] = id end  -- (unpack() mid-list gives one value)
  if ARGV[3] ~= '' then
    args[#args + 1] = 'IDLE'
    args[#args + 1] = ARGV[3]
  end
  args[#args + 1] = 'JUSTID'
  redis.call(unpack(args))
end
return lost
"""

# KEYS[1] = the queue. ARGV: group, consumer, min_idle_ms, count.
# -> {{id, {field, value, ...}, times_delivered}, ...}: entries of dead (or silent) workers.
RECLAIM = """
local out, cursor = {}, '0-0'
repeat
  local r = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], cursor, 'COUNT', tonumber(ARGV[4]) - #out)
  cursor = r[1]
  for _, e in ipairs(r[2]) do
    if e and e[1] then
      local p = redis.call('XPENDING', KEYS[1], ARGV[1], e[1], e[1], 1)
      out[#out + 1] = {e[1], e[2], p[1] and p[1][4] or 1}
    end
  end
until cursor == '0-0' or #out >= tonumber(ARGV[4])
return out
"""
