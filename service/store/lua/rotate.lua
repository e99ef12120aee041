-- Rotate a tenant's webhook signing secret. Every secret rotated out keeps signing for the
-- grace period (a second rotation does not cut the first one short); expired ones are dropped.
-- Safe to repeat: a rotation that already ran with this request id changes nothing.
-- KEYS: secret hash   ARGV: new secret, grace_ms, request id, most old secrets kept
local now = now_ms()
if redis.call('HGET', KEYS[1], 'rotation') == ARGV[3] then
  return now
end
local stored = redis.call('HGETALL', KEYS[1])
local old = {}
for i = 1, #stored, 2 do
  if string.sub(stored[i], 1, 4) == 'old:' then
    if tonumber(stored[i + 1]) <= now then
      redis.call('HDEL', KEYS[1], stored[i])
    else
      old[#old + 1] = {stored[i], tonumber(stored[i + 1])}
    end
  end
end
-- At most ARGV[4] secrets sign besides the current one: the oldest go first.
table.sort(old, function(a, b) return a[2] < b[2] end)
for i = 1, #old - tonumber(ARGV[4]) + 1 do
  redis.call('HDEL', KEYS[1], old[i][1])
end
local current = redis.call('HGET', KEYS[1], 'current')
if current then
  -- Strictly later than every other, so the newest sorts first even within one millisecond.
  local signs_until = now + tonumber(ARGV[2])
  for _, entry in ipairs(old) do
    if entry[2] >= signs_until then
      signs_until = entry[2] + 1
    end
  end
  redis.call('HSET', KEYS[1], 'old:' .. current, signs_until)
end
redis.call('HSET', KEYS[1], 'current', ARGV[1], 'rotation', ARGV[3])
return now
