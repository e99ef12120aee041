-- Record one webhook delivery attempt, if the caller still holds the delivery's lease.
-- A manual retry asked for while the attempt was in flight (webhook.redeliver) is honoured
-- now, whatever the attempt's outcome: the webhook is due again at once, on a fresh schedule.
-- KEYS: outbox, outbox leases, doc, deliveries, counts
-- ARGV: id, token, attempt JSON, outcome ('delivered' | 'failed' | 'retry'), delay_ms,
--       status code (or ''), log length, events channel prefix
-- Returns 1, or 0 when the lease was lost (nothing is changed).
if not holds_lease(KEYS[2], ARGV[1], ARGV[2]) then
  return 0
end
local raw = redis.call('GET', KEYS[3])
if not raw then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
  return 0
end
local doc = cjson.decode(raw)
local attempt = cjson.decode(ARGV[3])
local now = now_ms()
redis.call('HDEL', KEYS[2], ARGV[1])
local webhook = webhook_of(doc)
webhook.attempts = webhook.attempts + 1
webhook.cycle_attempts = webhook.cycle_attempts + 1
webhook.last_status_code = tonumber(ARGV[6])  -- nil: left out, read as null
attempt.at = now
local outcome = ARGV[4]
local due = nil
if webhook.redeliver then
  webhook.redeliver = nil
  webhook.cycle_attempts = 0
  due = now
elseif outcome == 'retry' then
  due = now + tonumber(ARGV[5])
end
if due then
  attempt.next_attempt_at = due
  redis.call('ZADD', KEYS[1], due, ARGV[1])
else
  attempt.next_attempt_at = cjson.null
  webhook.state = outcome
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HINCRBY', KEYS[5], 'wh:pending', -1)
  redis.call('HINCRBY', KEYS[5], 'wh:' .. outcome, 1)
end
redis.call('SET', KEYS[3], cjson.encode(doc))
redis.call('RPUSH', KEYS[4], cjson.encode(attempt))
redis.call('LTRIM', KEYS[4], -tonumber(ARGV[7]), -1)
notify_tenant(ARGV[8], doc.tenant, ARGV[1])
return 1
