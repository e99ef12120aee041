-- Record polls of pending watches of one partition and schedule their next ones, each fenced
-- by its lease.
-- KEYS: schedule, leases, then the document of each poll, in order
-- ARGV: events channel prefix, then per poll: id, token, due (ms), doc JSON
-- The event streams of each saved watch hear of it on its channel (prefix .. id).
-- Returns, in order, 1 per saved poll and 0 per lost lease (that watch is left unchanged); a
-- poll saved by an earlier run of this very call (a reply lost, the call repeated) answers 1.
local saved = {}
for i = 2, #ARGV, 4 do
  local id = ARGV[i]
  local doc_key = KEYS[2 + (i + 2) / 4]
  if holds_lease(KEYS[2], id, ARGV[i + 1]) then
    redis.call('SET', doc_key, ARGV[i + 3])
    redis.call('ZADD', KEYS[1], ARGV[i + 2], id)
    redis.call('HDEL', KEYS[2], id)
    redis.call('PUBLISH', ARGV[1] .. id, '')
    saved[#saved + 1] = 1
  elseif redis.call('GET', doc_key) == ARGV[i + 3] then
    saved[#saved + 1] = 1
  else
    saved[#saved + 1] = 0
  end
end
return saved
