-- Prepended (after _prelude.lua) to the host scripts of `service.hosts`: one upstream host's
-- fleet-wide state - a hash with a token bucket whose rate (the budget) moves with the host's
-- answers, and a circuit breaker per port of the host, a hash each under the same hash tag.
-- Every host script takes the keys of one host only.

local function host_load(key)
  local fields = redis.call('HGETALL', key)
  local h = {}
  for i = 1, #fields, 2 do
    h[fields[i]] = fields[i + 1]
  end
  return h
end

-- Bring the bucket to `now` at the current rate (never above `limit`); its size scales with
-- the rate, so a lowered budget also allows a smaller burst. A clock that went back (a
-- failover) refills nothing. A bucket seen for the first time is full.
local function host_refill(h, now, limit, burst)
  local rate = math.min(num(h.rate, limit), limit)
  if rate <= 0 then
    rate = limit
  end
  local size = math.max(1, burst * rate / limit)
  local ts = num(h.ts, now)
  local tokens = num(h.tokens, size)
  h.rate = rate
  h.tokens = math.min(size, tokens + math.max(0, now - ts) * rate / 1000)
  h.ts = now
end

local function host_save(key, h, ttl_ms)
  local args = {}
  for field, value in pairs(h) do
    args[#args + 1] = field
    args[#args + 1] = tostring(value)
  end
  redis.call('HSET', key, unpack(args))
  redis.call('PEXPIRE', key, ttl_ms)
end
