-- makecall: the telnum's intent, replacing its earlier one.
-- KEYS[1] intent hash, KEYS[2] icid of the new callid, KEYS[3] expiry set
-- ARGV[1] ttl ms, ARGV[2] grace ms (how long Redis keeps a key past its expiry, for the sweep),
-- ARGV[3] max pending, ARGV[4] icid prefix, ARGV[5..] field/value pairs, 'callid' first.
-- Returns {'full'}, or {'ok', old_state, old fields...} with old_state '', 'replaced' or
-- 'expired' (an earlier intent past its TTL that no sweep had taken yet).
local now = now_ms()
local ttl = tonumber(ARGV[1])
local keep = ttl + tonumber(ARGV[2])
local old = redis.call('HGETALL', KEYS[1])
local old_state = ''
if #old == 0 then
  if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[3]) then
    return { 'full' }
  end
else
  old_state = 'replaced'
  if tonumber(field(old, 'expires_at') or '0') <= now then
    old_state = 'expired'
  end
  remove(KEYS[1], old, KEYS[3], ARGV[4])
end
local fields = {}
for i = 5, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
fields[#fields + 1] = 'expires_at'
fields[#fields + 1] = tostring(now + ttl)
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('PEXPIRE', KEYS[1], keep)
redis.call('SET', KEYS[2], KEYS[1], 'PX', keep)
redis.call('ZADD', KEYS[3], now + ttl, ARGV[6])
local out = { 'ok', old_state }
for i = 1, #old do
  out[#out + 1] = old[i]
end
return out
