-- Extend the leases the caller still holds to ms from now, or release them: due in ms from
-- now, for any worker. The fencing tokens never change.
-- KEYS: schedule, leases   ARGV: ms, 'extend' | 'release', id1, token1, id2, token2, ...
-- Returns, in order, 1 per lease kept (or released) and 0 per lease lost.
local at = now_ms() + tonumber(ARGV[1])
local release = ARGV[2] == 'release'
local out = {}
for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  if holds_lease(KEYS[2], id, ARGV[i + 1]) then
    redis.call('ZADD', KEYS[1], 'XX', at, id)
    if release then
      redis.call('HDEL', KEYS[2], id)
    end
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
