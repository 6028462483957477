-- The wrk script of `npm run bench` (see bench/wrk-load.ts, which writes the request list and
-- reads the result). Settings come from the environment because wrk evaluates this file in a
-- fresh Lua state per thread, before any arguments reach it, and whether `delay` exists at all
-- must be decided then:
--
--   BENCH_REQUESTS       a Lua file returning { { method=, path=, headers=, body= }, ... },
--                        sent round-robin, every thread starting at a different one
--   BENCH_THREADS        the -t value
--   BENCH_RATE           requests per second per thread; absent or 0: as fast as answers come
--   BENCH_WINDOW_START   with BENCH_WINDOW_LENGTH, seconds after the start: answers are counted
--   BENCH_WINDOW_LENGTH  separately inside [start, start + length), the measured part of a run
--                        whose beginning is warm-up
--
-- done() prints one line, "BENCH_RESULT " followed by JSON.

local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
  int clock_gettime(int clock_id, bench_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local timespec = ffi.new("bench_timespec")

-- wrk gives scripts no clock; LuaJIT's FFI reads the monotonic one in nanoseconds.
local function now_ms()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, timespec)
  return tonumber(timespec.tv_sec) * 1000 + tonumber(timespec.tv_nsec) / 1e6
end

local rate = tonumber(os.getenv("BENCH_RATE") or "0") or 0
local window_length = tonumber(os.getenv("BENCH_WINDOW_LENGTH") or "0") or 0

-- Per thread (every thread has its own Lua state).
local requests = {}
local cursor = 0
statuses = {}
window_statuses = {}
lost_slots = 0
local window_start, window_end

local threads = {}

function setup(thread)
  thread:set("thread_index", #threads)
  table.insert(threads, thread)
end

function init(args)
  local list = dofile(os.getenv("BENCH_REQUESTS"))
  for i, r in ipairs(list) do
    requests[i] = wrk.format(r.method, r.path, r.headers, r.body)
  end
  local thread_count = tonumber(os.getenv("BENCH_THREADS") or "1") or 1
  cursor = math.floor((thread_index or 0) * #requests / thread_count)
  if window_length > 0 then
    window_start = now_ms() + (tonumber(os.getenv("BENCH_WINDOW_START") or "0") or 0) * 1000
    window_end = window_start + window_length * 1000
  end
end

function request()
  cursor = cursor % #requests + 1
  return requests[cursor]
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if window_end ~= nil then
    local t = now_ms()
    if t >= window_start and t < window_end then
      window_statuses[status] = (window_statuses[status] or 0) + 1
    end
  end
end

if rate > 0 then
  -- Paced load: one schedule per thread, a slot every 1/rate seconds, and each request waits for
  -- the next free slot, whichever connection sends it. A connection that comes back late takes a
  -- slot that is already due at once, so a short stall is caught up and the rate holds; slots
  -- more than one second overdue are given up (and counted), so a long stall does not end in a
  -- burst. wrk rounds the wait down to whole milliseconds, which moves a request earlier by less
  -- than a millisecond and leaves the schedule itself untouched.
  local interval = 1000 / rate
  local next_slot
  function delay()
    local now = now_ms()
    if next_slot == nil then next_slot = now end
    next_slot = next_slot + interval
    if next_slot < now - 1000 then
      lost_slots = lost_slots + math.floor((now - 1000 - next_slot) / interval)
      next_slot = now - 1000
    end
    if next_slot <= now then return 0 end
    return next_slot - now
  end
end

local function json_counts(counts)
  local parts = {}
  for status, count in pairs(counts) do
    table.insert(parts, string.format('"%d":%d', status, count))
  end
  return "{" .. table.concat(parts, ",") .. "}"
end

local function merge(into, counts)
  for status, count in pairs(counts or {}) do
    into[status] = (into[status] or 0) + count
  end
end

function done(summary, latency, requests_made)
  local all, windowed, lost = {}, {}, 0
  for _, thread in ipairs(threads) do
    merge(all, thread:get("statuses"))
    merge(windowed, thread:get("window_statuses"))
    lost = lost + (thread:get("lost_slots") or 0)
  end
  local e = summary.errors
  io.write("BENCH_RESULT " .. string.format(
    '{"durationUs":%d,"requests":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latencyUs":{"min":%d,"mean":%.1f,"stdev":%.1f,"max":%d,"p50":%d,"p90":%d,"p99":%d,"p999":%d},' ..
    '"statuses":%s,"windowStatuses":%s,"windowed":%s,"lostSlots":%d}\n',
    summary.duration, summary.requests, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.stdev, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    json_counts(all), json_counts(windowed), tostring(window_length > 0), lost))
end
