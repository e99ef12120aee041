-- Extend the leases the caller still holds to lease_ms from now; lease_ms 0 releases them
-- (due at once, for another worker). The fencing tokens do not change.
-- KEYS: schedule, leases   ARGV: lease_ms, id1, token1, id2, token2, ...
-- Returns, in order, 1 per lease kept (or released) and 0 per lease lost.
local lease_ms = tonumber(ARGV[1])
local expires = now_ms() + lease_ms
local out = {}
for i = 2, #ARGV, 2 do
  local id = ARGV[i]
  if holds_lease(KEYS[2], id, ARGV[i + 1]) then
    redis.call('ZADD', KEYS[1], 'XX', expires, id)
    if lease_ms == 0 then
      redis.call('HDEL', KEYS[2], id)
    end
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
