-- Record polls of pending watches and schedule their next ones, each fenced by its lease.
-- KEYS: schedule, leases
-- ARGV: watch key prefix, events channel prefix, then per poll: id, token, due (ms), doc JSON
-- The event streams of each saved watch hear of it on its channel (prefix .. id).
-- Returns, in order, 1 per saved poll and 0 per lost lease (that watch is left unchanged); a
-- poll saved by an earlier run of this very call (a reply lost, the call repeated) answers 1.
local saved = {}
for i = 3, #ARGV, 4 do
  local id = ARGV[i]
  if holds_lease(KEYS[2], id, ARGV[i + 1]) then
    redis.call('SET', ARGV[1] .. id, ARGV[i + 3])
    redis.call('ZADD', KEYS[1], ARGV[i + 2], id)
    redis.call('HDEL', KEYS[2], id)
    redis.call('PUBLISH', ARGV[2] .. id, '')
    saved[#saved + 1] = 1
  elseif redis.call('GET', ARGV[1] .. id) == ARGV[i + 3] then
    saved[#saved + 1] = 1
  else
    saved[#saved + 1] = 0
  end
end
return saved
