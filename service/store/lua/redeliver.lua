-- Queue the terminal webhook of a tenant's watch again, now (manual retry), on a fresh retry
-- schedule. While an attempt is in flight (a live lease), the request is kept on the document and
-- honoured when that attempt is recorded (deliver.lua), so it is neither lost nor sent twice
-- at once.
-- KEYS: doc, outbox, outbox leases, counts   ARGV: id, tenant, events channel prefix
-- Returns 'queued' | 'missing' | 'not_ended' | 'no_webhook'
local raw = redis.call('GET', KEYS[1])
if not raw then
  return 'missing'
end
local doc = cjson.decode(raw)
if doc.tenant ~= ARGV[2] then
  return 'missing'
end
if doc.state == 'pending' then
  return 'not_ended'
end
webhook_of(doc)
if doc.webhook.state == 'none' then
  return 'no_webhook'
end
local now = now_ms()
if redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then
  local expires = tonumber(redis.call('ZSCORE', KEYS[2], ARGV[1]) or '0')
  if expires > now then
    doc.webhook.redeliver = true
    redis.call('SET', KEYS[1], cjson.encode(doc))
    notify_tenant(ARGV[3], ARGV[2], ARGV[1])
    return 'queued'
  end
  redis.call('HDEL', KEYS[3], ARGV[1])  -- a lapsed lease (its worker died): nothing in flight
end
if doc.webhook.state ~= 'pending' then
  redis.call('HINCRBY', KEYS[4], 'wh:' .. doc.webhook.state, -1)
  redis.call('HINCRBY', KEYS[4], 'wh:pending', 1)
  doc.webhook.state = 'pending'
end
doc.webhook.cycle_attempts = 0
redis.call('SET', KEYS[1], cjson.encode(doc))
redis.call('ZADD', KEYS[2], now, ARGV[1])
notify_tenant(ARGV[3], ARGV[2], ARGV[1])
return 'queued'
