-- The sweep: consumes up to ARGV[2] intents whose TTL has passed. Each one is returned to
-- exactly one caller, which records its expiry (and sends intent.expired).
-- KEYS[1] expiry set; ARGV[1] icid prefix, ARGV[2] max.
-- Returns a list of field lists.
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms(), 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, callid in ipairs(ids) do
  redis.call('ZREM', KEYS[1], callid)
  local key = redis.call('GET', ARGV[1] .. callid)
  if key then
    local h = redis.call('HGETALL', key)
    if field(h, 'callid') == callid then
      remove(key, h, KEYS[1], ARGV[1])
      out[#out + 1] = h
    else
      redis.call('DEL', ARGV[1] .. callid)
    end
  end
end
return out
