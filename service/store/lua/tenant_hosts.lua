-- Note the upstream hosts a tenant's watches polled (for `GET /v1/status`, which shows only
-- those): each gets Redis time as its score; the newest `max` are kept.
-- KEYS: the tenant's hosts   ARGV: max, ttl ms, host1, host2, ...
local now = now_ms()
for i = 3, #ARGV do
  redis.call('ZADD', KEYS[1], now, ARGV[i])
end
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(tonumber(ARGV[1]) + 1))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
