-- A worker's heartbeat in the roster of live workers; returns the roster.
-- Workers not heard from within ttl_ms are dropped (their partitions pass to the others).
-- KEYS: workers   ARGV: worker id, ttl_ms
-- Returns the ids of the live workers (this one included).
local now = now_ms()
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
return redis.call('ZRANGE', KEYS[1], 0, -1)
