-- Record what one worker's polls of a host saw since its last report, and move the host's
-- budget and breaker for the whole fleet:
-- * a 429 or 503 cuts the budget (multiplicative, at most once per cut interval, never below
--   the floor); a Retry-After also keeps it from growing back until then;
-- * polls that all answered well grow it back (additive: a share of the limit per second
--   since the previous report, at most one second's worth), never above the limit;
-- * closed breaker: within a window, enough polls that mostly failed (no answer, or 5xx) open
--   it for the cool-down; half-open: the probe's answer closes it, or opens it again.
-- A report is sent once, never retried. Run twice, the cut interval and the time-based growth
-- keep the budget as if run once, and the probe's answer counts once (its id is cleared); only
-- the breaker's window would count those polls twice.
-- KEYS: host state
-- ARGV: host, limit, burst, ok, failed, throttled, quiet ms, probe id or '', probe ok ('1'),
--       cooldown ms, ttl ms, cut factor, cut interval ms, growth per second (share of the
--       limit), floor (share of the limit), window ms, min polls, failure ratio
-- Returns {1 if this report opened the breaker else 0, 1 if it cut the budget else 0}
local now = now_ms()
local h = host_load(KEYS[1])
local limit, burst = tonumber(ARGV[2]), tonumber(ARGV[3])
local ok, failed, throttled = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local cooldown = tonumber(ARGV[10])
h.host, h.limit, h.burst, h.seen = ARGV[1], limit, burst, now
host_refill(h, now, limit, burst)
local tripped, cut = 0, 0
local previous = num(h.reported, now)
if throttled > 0 then
  local cut_at = num(h.cut_at, 0)
  if now - cut_at >= tonumber(ARGV[13]) or now < cut_at then
    h.rate = math.max(limit * tonumber(ARGV[15]), h.rate * tonumber(ARGV[12]))
    h.cut_at = now
    cut = 1
  end
  h.quiet_until = math.max(num(h.quiet_until, 0), now + tonumber(ARGV[7]))
elseif ok > 0 and failed == 0 and now >= num(h.quiet_until, 0) then
  local elapsed = math.min(1000, math.max(0, now - previous))
  h.rate = math.min(limit, h.rate + limit * tonumber(ARGV[14]) * elapsed / 1000)
end
h.reported = now

local state = h.state or 'closed'
if ARGV[8] ~= '' and state == 'half_open' and h.probe == ARGV[8] then
  h.probe = ''
  if ARGV[9] == '1' then
    state, h.wait_until = 'closed', 0
    h.wok, h.wfail, h.wstart = 0, 0, now
  else
    state, h.wait_until = 'open', now + cooldown
  end
elseif state == 'closed' then
  local wstart = num(h.wstart, now)
  if now - wstart >= tonumber(ARGV[16]) or now < wstart then
    h.wok, h.wfail, wstart = 0, 0, now
  end
  h.wstart = wstart
  h.wok = num(h.wok, 0) + ok
  h.wfail = num(h.wfail, 0) + failed
  local polls = h.wok + h.wfail
  if polls >= tonumber(ARGV[17]) and h.wfail >= tonumber(ARGV[18]) * polls then
    state, h.wait_until = 'open', now + cooldown
    h.trips = num(h.trips, 0) + 1
    h.wok, h.wfail, h.wstart = 0, 0, now
    tripped = 1
  end
end
h.state = state
host_save(KEYS[1], h, tonumber(ARGV[11]))
return {tripped, cut}
