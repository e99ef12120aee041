-- Move a watch to its terminal state and, in the same step, queue its webhook (the outbox).
-- KEYS: schedule, doc, index:pending, index:<state>, counts, expiry, outbox
-- ARGV: id, token, doc JSON, state, retention_ms, has_webhook ('1' or '0')
-- Returns 1, or 0 when the lease was lost (nothing is changed).
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[2]) then
  return 0
end
local now = now_ms()
redis.call('SET', KEYS[2], ARGV[3])
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[4], 0, ARGV[1])
redis.call('HINCRBY', KEYS[5], 'pending', -1)
redis.call('HINCRBY', KEYS[5], ARGV[4], 1)
redis.call('ZADD', KEYS[6], now + tonumber(ARGV[5]), ARGV[1])
if ARGV[6] == '1' then
  redis.call('ZADD', KEYS[7], now, ARGV[1])
  redis.call('HINCRBY', KEYS[5], 'wh:pending', 1)
end
return 1
