-- Shared by every intent script (crates/cluster/src/intents.rs prepends it). Each script runs
-- atomically in Redis: no other command runs between its reads and its writes, which is what
-- makes a claim exactly-once however many nodes race for it.
--
-- Layout (P = the key prefix, "callbridge:" by default):
--   P intent:<telnum>   hash: callid telnum caller callee [data] [notify_url] created_at seq
--                       node expires_at (the intent of one telnum: the latest makecall wins)
--   P icid:<callid>     string: the intent's hash key (hang-up and cancel by callid)
--   P intent_expiry     sorted set: callid scored by expires_at (the sweep's queue, and the
--                       count that intent.max_pending bounds)
-- Expiry is judged by Redis's own clock (TIME), so that nodes whose clocks differ agree.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function field(h, name)
  for i = 1, #h, 2 do
    if h[i] == name then
      return h[i + 1]
    end
  end
  return nil
end

local function norm(number)
  if number and string.sub(number, 1, 1) == '+' then
    return string.sub(number, 2)
  end
  return number
end

-- Removes the intent stored at `key` (its fields `h`), its callid index and its expiry entry.
local function remove(key, h, expiry, icid_prefix)
  local callid = field(h, 'callid')
  redis.call('DEL', key)
  if callid then
    redis.call('DEL', icid_prefix .. callid)
    redis.call('ZREM', expiry, callid)
  end
end

local function prefixed(status, h)
  local out = { status }
  for i = 1, #h do
    out[#out + 1] = h[i]
  end
  return out
end
