-- Record polls of pending watches and schedule their next ones, each fenced by its lease.
-- KEYS: schedule, leases
-- ARGV: watch key prefix, JSON array of [id, token, due (ms, Redis time), doc JSON] items
-- Returns, in order, 1 per saved poll and 0 per lost lease (that watch is left unchanged).
local items = cjson.decode(ARGV[2])
local saved = {}
for i, item in ipairs(items) do
  local id = item[1]
  if holds_lease(KEYS[2], id, item[2]) then
    redis.call('SET', ARGV[1] .. id, item[4])
    redis.call('ZADD', KEYS[1], item[3], id)
    redis.call('HDEL', KEYS[2], id)
    saved[i] = 1
  else
    saved[i] = 0
  end
end
return saved
