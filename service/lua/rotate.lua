-- Rotate a tenant's webhook signing secret; the previous one keeps signing for a grace period.
-- KEYS: secret hash   ARGV: new secret, grace_ms
local now = now_ms()
local current = redis.call('HGET', KEYS[1], 'current')
if current then
  redis.call('HSET', KEYS[1], 'previous', current, 'previous_until', now + tonumber(ARGV[2]))
end
redis.call('HSET', KEYS[1], 'current', ARGV[1])
return now
