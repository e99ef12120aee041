-- Cancel a pending watch of the tenant. A worker holding its lease loses it (fencing).
-- KEYS: doc, schedule, index:pending, index:cancelled, counts, expiry
-- ARGV: id, tenant, retention_ms
-- Returns {'cancelled', doc} | {'conflict', doc} | {'missing'}
local raw = redis.call('GET', KEYS[1])
if not raw then
  return {'missing'}
end
local doc = cjson.decode(raw)
if doc.tenant ~= ARGV[2] then
  return {'missing'}
end
if doc.state ~= 'pending' then
  return {'conflict', raw}
end
local now = now_ms()
doc.state = 'cancelled'
doc.updated_at = now
doc.finished_at = now
doc.next_poll_at = cjson.null
local encoded = cjson.encode(doc)
redis.call('SET', KEYS[1], encoded)
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[4], 0, ARGV[1])
redis.call('HINCRBY', KEYS[5], 'pending', -1)
redis.call('HINCRBY', KEYS[5], 'cancelled', 1)
redis.call('ZADD', KEYS[6], now + tonumber(ARGV[3]), ARGV[1])
return {'cancelled', encoded}
