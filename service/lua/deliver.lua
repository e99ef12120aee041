-- Record one webhook delivery attempt, if the caller still holds the delivery's lease.
-- KEYS: outbox, doc, deliveries, counts
-- ARGV: id, token, attempt JSON, outcome ('delivered' | 'failed' | 'retry'), delay_ms,
--       status code (or ''), log length
-- Returns 1, or 0 when the lease was lost (nothing is changed).
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[2]) then
  return 0
end
local raw = redis.call('GET', KEYS[2])
if not raw then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 0
end
local now = now_ms()
local doc = cjson.decode(raw)
local attempt = cjson.decode(ARGV[3])
local webhook = doc.webhook
webhook.attempts = webhook.attempts + 1
webhook.cycle_attempts = (webhook.cycle_attempts or 0) + 1
webhook.last_status_code = tonumber(ARGV[6]) or cjson.null
attempt.at = now
if ARGV[4] == 'retry' then
  attempt.next_attempt_at = now + tonumber(ARGV[5])
  redis.call('ZADD', KEYS[1], attempt.next_attempt_at, ARGV[1])
else
  attempt.next_attempt_at = cjson.null
  webhook.state = ARGV[4]
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HINCRBY', KEYS[4], 'wh:pending', -1)
  redis.call('HINCRBY', KEYS[4], 'wh:' .. ARGV[4], 1)
end
redis.call('SET', KEYS[2], cjson.encode(doc))
redis.call('RPUSH', KEYS[3], cjson.encode(attempt))
redis.call('LTRIM', KEYS[3], -tonumber(ARGV[7]), -1)
return 1
