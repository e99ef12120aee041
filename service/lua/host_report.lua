-- Record what one worker's polls of a host saw since its last report, and move the host's
-- budget and its ports' breakers for the whole fleet:
-- * a 429 or 503 cuts the budget (multiplicative, at most once per cut interval, never below
--   the floor); a Retry-After also keeps it from growing back until then;
-- * otherwise, when a port's polls all answered well, the budget grows back (additive: a share
--   of the limit per second since the previous report, at most one second's worth), never
--   above the limit (a port that does not answer at all says nothing of the host's load);
-- * per port, closed breaker: within a window, polls that mostly failed (no answer, or 5xx),
--   when they are enough or end in a streak of failures however slow they come, open it for
--   the cool-down (a streak of 5 alone is chance on a busy host that mostly answers well; one
--   of 10 is not: a host that just died in a good window);
--   half-open: the probe's answer closes it, or opens it again.
-- A report is sent once, never retried. Run twice, the cut interval and the time-based growth
-- keep the budget as if run once, and the probe's answer counts once (its id is cleared); only
-- the breaker's window would count those polls twice.
-- KEYS: host state (the budget), then the breaker of each port reported (the same hash tag)
-- ARGV: host, limit, burst, throttled, quiet ms, cooldown ms, ttl ms, cut factor, cut interval
--       ms, growth per second (share of the limit), floor (share of the limit), window ms, min
--       polls, failure ratio, failed polls in a row that open a breaker, then for each breaker
--       key: port, ok, failed, probe id or '', probe ok ('1')
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
for i = 2, #KEYS do
  local at = 16 + 5 * (i - 2)
  local ok, failed = tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2])
  local probe, probe_ok = ARGV[at + 3], ARGV[at + 4] == '1'
  if ok > 0 and failed == 0 then
    answered_well = true
  end
  local b = host_load(KEYS[i])
  b.port, b.seen = ARGV[at], now
  local state = b.state or 'closed'
  if probe ~= '' and state == 'half_open' and b.probe == probe then
    b.probe = ''
    if probe_ok then
      state, b.wait_until = 'closed', 0
      b.wok, b.wfail, b.wstart, b.streak = 0, 0, now, 0
    else
      state, b.wait_until = 'open', now + cooldown
    end
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
      state, b.wait_until = 'open', now + cooldown
      b.trips = num(b.trips, 0) + 1
      b.wok, b.wfail, b.wstart, b.streak = 0, 0, now, 0
      tripped = tripped + 1
    end
  end
  b.state = state
  host_save(KEYS[i], b, ttl)
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
