-- An INVITE (or the CTI decision): consumes the telnum's intent when the dialled number is its
-- dedicated number (with ARGV[3] = '1', also when it is its callee).
-- KEYS[1] intent hash, KEYS[2] expiry set; ARGV[1] icid prefix, ARGV[2] dialled number
-- (normalised), ARGV[3] '1' for the CTI rule, ARGV[4] the claiming node ('' for none),
-- ARGV[5] the call index's key prefix, ARGV[6] the node_calls key prefix, ARGV[7] a live
-- entry's TTL in ms (index.rs: LIVE_TTL).
-- A claimed intent enters the call index under the claiming node in the same step, so that a
-- node that dies right after its claim leaves no call without a record (its reaper finds it).
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
if ARGV[4] ~= '' then
  local callid = field(h, 'callid')
  local row = cjson.encode({
    callid = callid,
    telnum = field(h, 'telnum'),
    caller = field(h, 'caller'),
    callee = field(h, 'callee'),
    data = field(h, 'data'),
    notify_url = field(h, 'notify_url'),
    state = 'trying',
    created_at = tonumber(field(h, 'created_at') or '0'),
  })
  local key = ARGV[5] .. callid
  redis.call('HSET', key, 'node', ARGV[4], 'seq', field(h, 'seq') or '0', 'row', row, 'ended', '0')
  redis.call('PEXPIRE', key, ARGV[7])
  redis.call('SADD', ARGV[6] .. ARGV[4], callid)
end
return prefixed('claimed', h)
