-- One port of a host as `GET /v1/status` shows it (reads only): the host's budget and the
-- port's breaker. An open breaker whose cool-down has passed shows as half-open: the next
-- request probes.
-- KEYS: host state (the budget), the port's breaker
-- Returns {} for a host with no state, else {host, budget (milli-requests/s), limit
-- (milli-requests/s), breaker state, until when it stays open (ms, 0: not open), trips, last
-- seen (ms), now (ms)}
local now = now_ms()
local h = host_load(KEYS[1])
if not h.host then
  return {}
end
local b = host_load(KEYS[2])
local state = b.state or 'closed'
local wait_until = num(b.wait_until, 0)
if state == 'open' and now >= wait_until then
  state = 'half_open'
end
if state ~= 'open' then
  wait_until = 0
end
local limit = num(h.limit, 0)
local rate = math.min(num(h.rate, limit), limit)
return {h.host, math.floor(rate * 1000), math.floor(limit * 1000), state, wait_until,
        num(b.trips, 0), num(h.seen, 0), now}
