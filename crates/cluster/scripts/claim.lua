-- An INVITE (or the CTI decision): consumes the telnum's intent when the dialled number is its
-- dedicated number (with ARGV[3] = '1', also when it is its callee).
-- KEYS[1] intent hash, KEYS[2] expiry set; ARGV[1] icid prefix, ARGV[2] dialled number
-- (normalised), ARGV[3] '1' for the CTI rule.
-- Returns {'none'}, {'other'}, {'expired', fields...} or {'claimed', fields...}.
local h = redis.call('HGETALL', KEYS[1])
if #h == 0 then
  return { 'none' }
end
if tonumber(field(h, 'expires_at') or '0') <= now_ms() then
  remove(KEYS[1], h, KEYS[2], ARGV[1])
  return prefixed('expired', h)
end
local matches = norm(field(h, 'caller')) == ARGV[2]
if ARGV[3] == '1' and not matches then
  matches = norm(field(h, 'callee')) == ARGV[2]
end
if not matches then
  return { 'other' }
end
remove(KEYS[1], h, KEYS[2], ARGV[1])
return prefixed('claimed', h)
