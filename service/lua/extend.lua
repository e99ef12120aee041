-- Extend a lease the caller still holds. KEYS: schedule   ARGV: id, token, lease_ms
-- Returns the new token, or 0 when the lease was lost.
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[2]) then
  return 0
end
local token = now_ms() + tonumber(ARGV[3])
if token <= tonumber(score) then
  token = tonumber(score) + 1
end
redis.call('ZADD', KEYS[1], token, ARGV[1])
return token
