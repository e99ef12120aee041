-- One port of a host as `GET /v1/status` shows it to a tenant (reads only): the host's budget
-- and the breaker that holds this tenant's polls: the port's fleet breaker when it is not
-- closed, else the tenant's own. An open breaker whose cool-down has passed shows as
-- half-open: the next request probes.
-- KEYS: host state (the budget), the port's fleet breaker, then the tenant's breaker (optional)
-- Returns {} for a host with no state, else {host, budget (milli-requests/s), limit
-- (milli-requests/s), breaker state, until when it stays open (ms, 0: not open), trips (both
-- breakers'), last seen (ms), now (ms)}
local now = now_ms()
local h = host_load(KEYS[1])
if not h.host then
  return {}
end
local fleet = host_load(KEYS[2])
local b = fleet
local trips = num(fleet.trips, 0)
if KEYS[3] then
  local own = host_load(KEYS[3])
  trips = trips + num(own.trips, 0)
  if (fleet.state or 'closed') == 'closed' then
    b = own
  end
end
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
        trips, num(h.seen, 0), now}
