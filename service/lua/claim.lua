-- Lease up to LIMIT due watches (due by Redis time, expired leases included).
-- The lease expiry is the new schedule score and the fencing token: it only grows.
-- KEYS: schedule   ARGV: watch key prefix, limit, lease_ms
-- Returns {now, next_due or -1, token, id1, doc1, id2, doc2, ...}
local now = now_ms()
local token = now + tonumber(ARGV[3])
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local out = {now, -1, token}
for _, id in ipairs(ids) do
  local doc = redis.call('GET', ARGV[1] .. id)
  if doc then
    redis.call('ZADD', KEYS[1], token, id)
    out[#out + 1] = id
    out[#out + 1] = doc
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
local head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if head[2] then
  out[2] = tonumber(head[2])
end
return out
