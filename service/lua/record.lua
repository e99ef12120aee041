-- Record a poll of a pending watch and schedule its next one, if the caller still holds the lease.
-- KEYS: schedule, doc   ARGV: id, token, doc JSON, due (ms, Redis time: the doc's next_poll_at)
-- Returns 1, or 0 when the lease was lost (nothing is changed).
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[2]) then
  return 0
end
redis.call('SET', KEYS[2], ARGV[3])
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
return 1
