-- Lease up to LIMIT due items of a schedule (due by Redis time, expired leases included).
-- Each gets the caller's fencing token in the leases hash and the lease expiry as its score.
-- A token whose claim reply was lost (a timeout) may be handed back: its items are released
-- first (due now), so nothing waits a whole lease for a worker that never saw them.
-- KEYS: schedule, leases   ARGV: watch key prefix, limit, lease_ms, token[, lost token]
-- Returns {now, next_due or -1, id1, doc1, id2, doc2, ...}
local now = now_ms()
if ARGV[5] and ARGV[5] ~= '' then
  local held = redis.call('HGETALL', KEYS[2])
  for i = 1, #held, 2 do
    if held[i + 1] == ARGV[5] then
      redis.call('ZADD', KEYS[1], 'XX', now, held[i])
      redis.call('HDEL', KEYS[2], held[i])
    end
  end
end
local expires = now + tonumber(ARGV[3])
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local out = {now, -1}
for _, id in ipairs(ids) do
  local doc = redis.call('GET', ARGV[1] .. id)
  if doc then
    redis.call('ZADD', KEYS[1], expires, id)
    redis.call('HSET', KEYS[2], id, ARGV[4])
    out[#out + 1] = id
    out[#out + 1] = doc
  else
    redis.call('ZREM', KEYS[1], id)
    redis.call('HDEL', KEYS[2], id)
  end
end
local head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if head[2] then
  out[2] = tonumber(head[2])
end
return out
