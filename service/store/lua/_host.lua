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
  return size
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

-- Max-min fair shares of the bucket between tenants (`service.hosts`). A tenant is backlogged
-- while it was refused within `backlog_ms`. A virtual clock `vt` advances at the budget divided
-- by the backlogged tenants; each tenant's finish tag (the `fair` ZSET) advances by one per
-- request it is granted. While another tenant is backlogged, a tenant takes only what its tag
-- allows (at most `allow` ahead of the clock: its part of the burst); while none is, it may
-- take all the bucket holds (work-conserving). Tags are clamped to [vt, vt + allow]: no credit
-- is banked by waiting and no debt by taking what nobody else wanted. Cost per call: a
-- ZREMRANGEBYSCORE each, a ZCARD, then per tenant two ZSCOREs and a ZADD.
local function fair_open(h, now, fair_key, backlog_key, backlog_ms)
  redis.call('ZREMRANGEBYSCORE', backlog_key, '-inf', '(' .. (now - backlog_ms))
  local backlogged = redis.call('ZCARD', backlog_key)
  local vt, since = num(h.vt, 0), num(h.vt_ts, now)
  if now > since then
    vt = vt + (now - since) * h.rate / 1000 / math.max(1, backlogged)
  end
  h.vt, h.vt_ts = vt, now
  redis.call('ZREMRANGEBYSCORE', fair_key, '-inf', vt)
  return backlogged
end

-- Take up to `n` tokens for `tenant` (see `fair_open`); returns granted, wait ms for the rest
-- (0 when all were granted), and the rate at which this tenant's refused requests may come
-- back (its share of the budget while others are backlogged, else all of it).
local function fair_take(h, now, tenant, n, backlogged, size, fair_key, backlog_key)
  local member = redis.call('ZSCORE', backlog_key, tenant)
  local others = backlogged - (member and 1 or 0)
  local sharing = others + 1
  local allow = math.max(1, size / sharing)
  local start = math.max(num(redis.call('ZSCORE', fair_key, tenant), h.vt), h.vt)
  local granted = math.max(0, math.min(n, math.floor(h.tokens)))
  if others > 0 then
    granted = math.min(granted, math.max(0, math.floor(h.vt + allow - start + 1e-9)))
  end
  h.tokens = h.tokens - granted
  local finish = math.min(start + granted, h.vt + allow)
  if finish > h.vt then
    redis.call('ZADD', fair_key, finish, tenant)
  end
  if granted >= n then
    return granted, 0, h.rate
  end
  redis.call('ZADD', backlog_key, now, tenant)
  local wait = 0
  if h.tokens < 1 then
    wait = math.ceil((1 - h.tokens) * 1000 / h.rate)
  end
  if others == 0 then
    return granted, wait, h.rate
  end
  local behind = finish + 1 - allow - h.vt  -- virtual time until its next request is its due
  wait = math.max(wait, math.ceil(behind * 1000 * sharing / h.rate))
  return granted, wait, h.rate / sharing
end

-- A circuit breaker's answer to one request: 'closed' (go, through the budget), or refused
-- until the cool-down ends, or the probe (one request after the cool-down; while it is out,
-- the others wait for its lease to end, at most a cool-down). `barred`: this tenant may not
-- take the probe now (returns refused, waiting for another tenant's probe).
-- Returns state, granted (0/1: the probe), wait ms, probe id or ''.
local function breaker_admit(b, now, probe_id, lease, cooldown, barred)
  local state = b.state or 'closed'
  if state == 'closed' then
    return state, 0, 0, ''
  end
  local wait_until = num(b.wait_until, 0)
  if now < wait_until then
    local wait = wait_until - now
    if state == 'half_open' then
      wait = math.min(wait, cooldown)
    end
    return state, 0, wait, ''
  end
  if barred then
    return 'open', 0, math.min(lease, cooldown), ''
  end
  b.state, b.probe, b.wait_until = 'half_open', probe_id, now + lease
  return 'half_open', 1, math.min(lease, cooldown), probe_id
end

-- The probe's answer: closes the breaker, or opens it for another cool-down. Returns true
-- when `probe` was this breaker's probe.
local function breaker_settle(b, now, probe, probe_ok, cooldown)
  if probe == '' or b.state ~= 'half_open' or b.probe ~= probe then
    return false
  end
  b.probe = ''
  if probe_ok then
    b.state, b.wait_until = 'closed', 0
    b.wok, b.wfail, b.wstart, b.streak = 0, 0, now, 0
  else
    b.state, b.wait_until = 'open', now + cooldown
  end
  return true
end

local function breaker_open(b, now, cooldown)
  b.state, b.wait_until = 'open', now + cooldown
  b.trips = num(b.trips, 0) + 1
  b.wok, b.wfail, b.wstart, b.streak = 0, 0, now, 0
end
