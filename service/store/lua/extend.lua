-- Extend the leases the caller still holds to ms from now, release them (due in ms from now,
-- for any worker), or drop them (off the schedule: their documents are gone). The fencing
-- tokens never change.
-- KEYS: schedule, leases   ARGV: ms, 'extend' | 'release' | 'drop', id1, token1, id2, ...
-- Returns, in order, 1 per lease kept (released, dropped) and 0 per lease lost.
local at = now_ms() + tonumber(ARGV[1])
local how = ARGV[2]
local out = {}
for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  if holds_lease(KEYS[2], id, ARGV[i + 1]) then
    if how == 'drop' then
      redis.call('ZREM', KEYS[1], id)
    else
      redis.call('ZADD', KEYS[1], 'XX', at, id)
    end
    if how ~= 'extend' then
      redis.call('HDEL', KEYS[2], id)
    end
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
