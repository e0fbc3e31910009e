"""Server-side scripts. Both run atomically, so a crash between two calls never leaves half a batch.

APPLY_EVENTS: one call per batch of events of one source, for every stream view of that source.
Dedupe (ZADD NX of the event_id into the source's sorted set, scored by when it may be forgotten)
and the tile updates happen in the same atomic
script, so re-applying a batch after a crash changes nothing. Tiles are read once, updated in a
Lua table, and written once per (key, field) at the end.

ARGV[1] = JSON config:
  now_us, native (bool), dedupe_key, dedupe_retention_us,
  views: [{prefix, jk (1-based index into the event's keys), lateness_us,
           hops: [{h_us, h_s, w_us, init: [...], comps: [[kind, col (1-based, 0 = none), slot (1-based)], ...]}]}]
ARGV[2] = JSON events: [[event_id, event_time_us, [key text per join key], [value per column]], ...]
Returns {applied, duplicates, tile_writes}.

PUSH_OLDER: the rare path of the batch writer, a re-push of a partition older than the newest one
pushed: per row, write only when the slot does not hold a newer feature_timestamp, and raise the
key's expiry only upwards (portable `PEXPIREAT ... GT`).
ARGV[1] = JSON: [[key, ft_field, ft_s, expire_ms, [field, value, ...]], ...]
Returns {written, skipped_newer}.
"""

from __future__ import annotations

_COMMON = r"""
local null = cjson.null
local floor, sformat, concat, call = math.floor, string.format, table.concat, redis.call
local function bytes_lt(a, b)
  -- byte-wise a < b (Lua's own string comparison follows the server locale)
  local la, lb = #a, #b
  local n = la
  if lb < n then n = lb end
  for i = 1, n do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return la < lb
end
local function less(a, b)
  if type(a) == 'string' then return bytes_lt(a, b) end
  return a < b
end
local server_now_ms = nil
local function now_ms()
  if server_now_ms == nil then
    local t = redis.call('TIME')
    server_now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return server_now_ms
end
local function expire_at_least(key, at_ms)
  -- PEXPIREAT key at_ms GT, also on servers without the flag and for keys without a TTL yet
  local pttl = redis.call('PTTL', key)
  if pttl == -2 then return end
  if pttl == -1 or now_ms() + pttl < at_ms then redis.call('PEXPIREAT', key, at_ms) end
end
local function fmt_int(x) return sformat('%.0f', x) end
"""

APPLY_EVENTS = _COMMON + r"""
local cfg = cjson.decode(ARGV[1])
local events = cjson.decode(ARGV[2])
local now_us = cfg.now_us
local views = cfg.views

local encode_str = cjson.encode
local function enc(x)
  if x == null then return 'null' end
  if type(x) == 'string' then return encode_str(x) end
  if x == floor(x) and x < 1e15 and x > -1e15 then return sformat('%.0f', x) end
  return sformat('%.17g', x)
end
local function copy(t) local c = {} for i = 1, #t do c[i] = t[i] end return c end

local cache = {}      -- key -> {view=, fields={field -> {tile=, exp=}}, names={field...}}
local order = {}
local ops = {}        -- per (event, view, hop): {entry, hop, et, eid, vals}, in event order
local applied, dups, writes = 0, 0, 0
local dkey = cfg.dedupe_key
local dmax = 0
-- forget event ids whose every tile has expired (a duplicate of them could not change anything)
redis.call('ZREMRANGEBYSCORE', dkey, '-inf', '(' .. fmt_int(now_us))

-- Pass 1: dedupe, and collect the tiles every new event touches.
local retention = cfg.dedupe_retention_us
local nviews = #views
for e = 1, #events do
  local ev = events[e]
  local eid, et, ks, vals = ev[1], ev[2], ev[3], ev[4]
  local forget_at = et + retention
  if call('ZADD', dkey, 'NX', fmt_int(forget_at), eid) == 0 then
    dups = dups + 1
  else
    applied = applied + 1
    if forget_at > dmax then dmax = forget_at end
    for vi = 1, nviews do
      local v = views[vi]
      local key = v.prefix .. ks[v.jk]
      local hops = v.hops
      for hi = 1, #hops do
        local h = hops[hi]
        local k = floor(et / h.h_us)
        local exp = (k + 1) * h.h_us + h.w_us + v.lateness_us
        if exp > now_us then
          local entry = cache[key]
          if entry == nil then
            entry = {view = v, fields = {}, names = {}}
            cache[key] = entry
            order[#order + 1] = key
          end
          local field = h.fp .. fmt_int(k)
          local f = entry.fields[field]
          if f == nil then
            f = {exp = exp, init = h.init}
            entry.fields[field] = f
            entry.names[#entry.names + 1] = field
          end
          ops[#ops + 1] = {f, h, et, eid, vals}
        end
      end
    end
  end
end

-- Pass 2: read every touched tile (and the fallback's '_gc') with one HMGET per key.
for _, key in ipairs(order) do
  local entry = cache[key]
  local names = entry.names
  if not cfg.native then names[#names + 1] = '_gc' end
  for i = 1, #names, 1000 do
    local last = math.min(i + 999, #names)
    local raw = call('HMGET', key, unpack(names, i, last))
    for j = i, last do
      local r = raw[j - i + 1]
      local f = entry.fields[names[j]]
      if f == nil then entry.gc = tonumber(r)   -- '_gc'
      elseif r then f.tile = cjson.decode(r) else f.tile = copy(f.init) end
    end
  end
end

-- Pass 3: apply the events in order.
for o = 1, #ops do
  local op = ops[o]
  local t, h, et, eid, vals = op[1].tile, op[2], op[3], op[4], op[5]
  if t[1] == null or t[1] < et then t[1] = et end
  local comps = h.comps
  for ci = 1, #comps do
    local c = comps[ci]
    local kind, col, i = c[1], c[2], c[3]
    if kind == 'n' then
      t[i] = t[i] + 1
    else
      local x = vals[col]
      if x ~= null then
        if kind == 'nn' then t[i] = t[i] + 1
        elseif kind == 'sum' then t[i] = t[i] + x
        elseif kind == 'max' then if t[i] == null or less(t[i], x) then t[i] = x end
        elseif kind == 'min' then if t[i] == null or less(x, t[i]) then t[i] = x end
        elseif kind == 'last' then
          local cet = t[i]
          if cet == null or cet < et or (cet == et and bytes_lt(t[i + 1], eid)) then
            t[i] = et; t[i + 1] = eid; t[i + 2] = x
          end
        end
      end
    end
  end
end

if dmax > 0 then expire_at_least(dkey, math.floor(dmax / 1000)) end

for _, key in ipairs(order) do
  local entry = cache[key]
  local v = entry.view
  local args = {}
  local maxexp, minexp = 0, nil
  for field, f in pairs(entry.fields) do
    local t = f.tile
    local parts = {}
    for i = 1, #t do parts[i] = enc(t[i]) end
    args[#args + 1] = field
    args[#args + 1] = '[' .. table.concat(parts, ',') .. ']'
    if f.exp > maxexp then maxexp = f.exp end
    if minexp == nil or f.exp < minexp then minexp = f.exp end
    writes = writes + 1
  end
  if not cfg.native then
    -- Portable fallback: '_gc' holds the earliest expiry of any tile in the hash; once it has passed,
    -- sweep the hash and delete expired tiles (their expiry follows from the field name). Tiles
    -- written by this call all expire after now, so the sweep never touches them.
    local gc = entry.gc
    local old_gc = gc
    if gc ~= nil and gc <= now_us then
      local hops = {}
      for _, h in ipairs(v.hops) do hops[tostring(h.h_s)] = h end
      local dels, newmin = {}, nil
      for _, field in ipairs(call('HKEYS', key)) do
        local hs, ks = string.match(field, '^(%d+):(%-?%d+)$')
        local h = hs and hops[hs]
        if h then
          local exp = (tonumber(ks) + 1) * h.h_us + h.w_us + v.lateness_us
          if exp <= now_us then dels[#dels + 1] = field
          elseif newmin == nil or exp < newmin then newmin = exp end
        end
      end
      for i = 1, #dels, 500 do
        call('HDEL', key, unpack(dels, i, math.min(i + 499, #dels)))
      end
      gc = newmin
    end
    if gc == nil or minexp < gc then gc = minexp end
    if gc ~= old_gc then
      args[#args + 1] = '_gc'
      args[#args + 1] = fmt_int(gc)
    end
  end
  for i = 1, #args, 2000 do
    call('HSET', key, unpack(args, i, math.min(i + 1999, #args)))
  end
  if cfg.native then
    -- HSET clears a field's TTL: re-issue it for every field written
    for field, f in pairs(entry.fields) do
      call('HPEXPIREAT', key, floor(f.exp / 1000), 'FIELDS', 1, field)
    end
  end
  expire_at_least(key, math.floor(maxexp / 1000))
end

return {applied, dups, writes}
"""

PUSH_OLDER = _COMMON + r"""
local rows = cjson.decode(ARGV[1])
local written, skipped = 0, 0
for _, r in ipairs(rows) do
  local key, ft_field, ft_s, exp_ms, kv = r[1], r[2], r[3], r[4], r[5]
  local cur = tonumber(redis.call('HGET', key, ft_field))
  if cur ~= nil and cur > tonumber(ft_s) then
    skipped = skipped + 1
  else
    redis.call('HSET', key, ft_field, ft_s, unpack(kv))
    expire_at_least(key, exp_ms)
    written = written + 1
  end
end
return {written, skipped}
"""
