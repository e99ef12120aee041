-- Record what one worker's polls of a host saw since its last report, and move the host's
-- budget and its breakers for the whole fleet:
-- * a 429 or 503 cuts the budget (multiplicative, at most once per cut interval, never below
--   the floor); a Retry-After also keeps it from growing back until then;
-- * otherwise, when some entry's polls all answered well, the budget grows back (additive: a
--   share of the limit per second since the previous report, at most one second's worth),
--   never above the limit (a port that does not answer at all says nothing of the host's load);
-- * per tenant and port, closed breaker: within a window, polls that mostly failed (no answer,
--   or 5xx), when they are enough or end in a streak of failures however slow they come, open
--   it for the cool-down (a streak of 5 alone is chance on a busy host that mostly answers
--   well; one of 10 is not: a host that just died in a good window);
-- * the port's fleet breaker opens when a second tenant's breaker opens within a cool-down of
--   another's and no tenant's polls of the port mostly answered within the window (an outage,
--   not one tenant's broken paths, which cost that tenant alone);
-- * half-open: the probe's answer closes its breaker, or opens it again.
-- A report is sent once, never retried. Run twice, the cut interval and the time-based growth
-- keep the budget as if run once, and the probe's answer counts once (its id is cleared); only
-- the breakers' windows would count those polls twice.
-- KEYS: host state (the budget), then for each entry: the port's fleet breaker and the
--       tenant's breaker (the same hash tag)
-- ARGV: host, limit, burst, throttled, quiet ms, cooldown ms, ttl ms, cut factor, cut interval
--       ms, growth per second (share of the limit), floor (share of the limit), window ms, min
--       polls, failure ratio, failed polls in a row that open a breaker, then for each entry:
--       port, tenant, ok, failed, probe id or '', probe ok ('1')
-- Returns {breakers this report opened, 1 if it cut the budget else 0}
local now = now_ms()
local h = host_load(KEYS[1])
local limit, burst = tonumber(ARGV[2]), tonumber(ARGV[3])
local throttled = tonumber(ARGV[4])
local cooldown, ttl = tonumber(ARGV[6]), tonumber(ARGV[7])
local window, min_polls, ratio = tonumber(ARGV[12]), tonumber(ARGV[13]), tonumber(ARGV[14])
local streak_max = tonumber(ARGV[15])
h.host, h.limit, h.burst, h.seen = ARGV[1], limit, burst, now
host_refill(h, now, limit, burst)

local tripped, cut, answered_well = 0, 0, false
for i = 0, (#ARGV - 15) / 6 - 1 do
  local at = 16 + 6 * i
  local port, tenant = ARGV[at], ARGV[at + 1]
  local ok, failed = tonumber(ARGV[at + 2]), tonumber(ARGV[at + 3])
  local probe, probe_ok = ARGV[at + 4], ARGV[at + 5] == '1'
  if ok > 0 and failed == 0 then
    answered_well = true
  end
  local fleet_key, own_key = KEYS[2 + 2 * i], KEYS[3 + 2 * i]
  local fleet, b = host_load(fleet_key), host_load(own_key)
  fleet.port, fleet.seen, b.port, b.seen = port, now, port, now
  if ok > failed then
    fleet.healthy_at = now
  end
  if breaker_settle(fleet, now, probe, probe_ok, cooldown) and not probe_ok then
    fleet.prober = tenant
  end
  local state = b.state or 'closed'
  if breaker_settle(b, now, probe, probe_ok, cooldown) then
    state = b.state
  elseif state == 'closed' then
    local wstart = num(b.wstart, now)
    if now - wstart >= window or now < wstart then
      b.wok, b.wfail, wstart = 0, 0, now
    end
    b.wstart = wstart
    b.wok = num(b.wok, 0) + ok
    b.wfail = num(b.wfail, 0) + failed
    -- A report with any good answer ends a streak (its polls' order is not known).
    b.streak = ok > 0 and 0 or num(b.streak, 0) + failed
    local polls = b.wok + b.wfail
    local mostly_failed = b.wfail >= ratio * polls and (polls >= min_polls or b.streak >= streak_max)
    if mostly_failed or b.streak >= 2 * streak_max then
      breaker_open(b, now, cooldown)
      state = 'open'
      tripped = tripped + 1
      local other = fleet.trip_tenant
      if (fleet.state or 'closed') == 'closed' and other and other ~= tenant
          and now - num(fleet.trip_at, 0) < cooldown
          and now - num(fleet.healthy_at, 0) >= window then
        breaker_open(fleet, now, cooldown)
        tripped = tripped + 1
      end
      fleet.trip_tenant, fleet.trip_at = tenant, now
    end
  end
  b.state = state
  host_save(fleet_key, fleet, ttl)
  host_save(own_key, b, ttl)
end

local previous = num(h.reported, now)
if throttled > 0 then
  local cut_at = num(h.cut_at, 0)
  if now - cut_at >= tonumber(ARGV[9]) or now < cut_at then
    h.rate = math.max(limit * tonumber(ARGV[11]), h.rate * tonumber(ARGV[8]))
    h.cut_at = now
    cut = 1
  end
  h.quiet_until = math.max(num(h.quiet_until, 0), now + tonumber(ARGV[5]))
elseif answered_well and now >= num(h.quiet_until, 0) then
  local elapsed = math.min(1000, math.max(0, now - previous))
  h.rate = math.min(limit, h.rate + limit * tonumber(ARGV[10]) * elapsed / 1000)
end
h.reported = now
host_save(KEYS[1], h, ttl)
return {tripped, cut}
