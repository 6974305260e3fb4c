-- cancelcall, or a hang-up of a waiting call: withdraws the intent at KEYS[1] (if ARGV[2] is
-- not empty, only when it is still that callid's).
-- KEYS[1] intent hash, KEYS[2] expiry set; ARGV[1] icid prefix, ARGV[2] callid or ''.
-- Returns {'none'} or {'cancelled', fields...}.
local h = redis.call('HGETALL', KEYS[1])
if #h == 0 then
  return { 'none' }
end
if ARGV[2] ~= '' and field(h, 'callid') ~= ARGV[2] then
  return { 'none' }
end
remove(KEYS[1], h, KEYS[2], ARGV[1])
return prefixed('cancelled', h)
