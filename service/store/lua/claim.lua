-- Lease up to LIMIT due items of a schedule (due by Redis time, expired leases included).
-- Each gets the caller's fencing token in the leases hash and the lease expiry as its score.
-- A token whose claim reply was lost (a timeout) may be handed back: its items are released
-- first (due now), so nothing waits a whole lease for a worker that never saw them.
-- The caller reads the items' documents next (same slot); an item whose document is gone is
-- dropped then (extend.lua, 'drop').
-- KEYS: schedule, leases   ARGV: limit, lease_ms, token[, lost token]
-- Returns {now, next_due or -1, id1, id2, ...}
local now = now_ms()
if ARGV[4] and ARGV[4] ~= '' then
  local held = redis.call('HGETALL', KEYS[2])
  for i = 1, #held, 2 do
    if held[i + 1] == ARGV[4] then
      redis.call('ZADD', KEYS[1], 'XX', now, held[i])
      redis.call('HDEL', KEYS[2], held[i])
    end
  end
end
local expires = now + tonumber(ARGV[2])
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local out = {now, -1}
for _, id in ipairs(ids) do
  redis.call('ZADD', KEYS[1], expires, id)
  redis.call('HSET', KEYS[2], id, ARGV[3])
  out[#out + 1] = id
end
local head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if head[2] then
  out[2] = tonumber(head[2])
end
return out
