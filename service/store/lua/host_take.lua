-- Take requests from one host's fleet-wide budget, shared fairly between tenants (`fair_take`),
-- each entry through two circuit breakers of its port (when the call has breakers): the port's
-- own for the whole fleet, and the tenant's on that port. The fleet's is checked first: open,
-- nobody's requests go until its cool-down ends, then one request fleet-wide probes it (not
-- twice in a row by the same tenant when another tenant is waiting). Then the tenant's:
-- closed, requests go as the budget allows; open, none until its cool-down ends, then one
-- request of that tenant probes it. A probe takes no token. While a probe is out
-- (half-open), the others wait for its lease to end, at most a cool-down. A call repeated
-- after its reply was lost only leaves budget unused (a lost probe's lease lapses).
-- KEYS: host state (the budget), the fair tags, the backlog, then, when ARGV[9] is '1', for
--       each entry: the port's fleet breaker and the tenant's breaker (all one hash tag)
-- ARGV: host, limit (req/s), burst, probe id, probe lease ms, cooldown ms, ttl ms, backlog ms,
--       breakers ('1' or '0'), then for each entry: port, tenant, n
-- Returns {budget (requests/s, as text: unrounded, however small), then per entry: granted,
-- wait ms for the rest, breaker state ('closed', 'open' or 'half_open'), probe id or '', the
-- rate (as text) at which this tenant's refused requests may come back}.
local now = now_ms()
local h = host_load(KEYS[1])
local limit, burst = tonumber(ARGV[2]), tonumber(ARGV[3])
local probe_id, lease, cooldown = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local ttl, backlog_ms, breakers = tonumber(ARGV[7]), tonumber(ARGV[8]), ARGV[9] == '1'
h.host, h.limit, h.burst, h.seen = ARGV[1], limit, burst, now
if not breakers then
  h.rate = limit  -- no reports move a receiver's budget: it is its limit, as configured now
end
local size = host_refill(h, now, limit, burst)
local backlogged = fair_open(h, now, KEYS[2], KEYS[3], backlog_ms)
local out = {tostring(h.rate)}
for i = 0, (#ARGV - 9) / 3 - 1 do
  local port, tenant, n = ARGV[10 + 3 * i], ARGV[11 + 3 * i], tonumber(ARGV[12 + 3 * i])
  local state, granted, wait, probe, rate = 'closed', 0, 0, '', h.rate
  if breakers then
    local fleet_key, own_key = KEYS[4 + 2 * i], KEYS[5 + 2 * i]
    local fleet, own = host_load(fleet_key), host_load(own_key)
    fleet.port, fleet.seen, own.port, own.seen = port, now, port, now
    local barred = fleet.prober == tenant and fleet.others == '1'
    state, granted, wait, probe = breaker_admit(fleet, now, probe_id, lease, cooldown, barred)
    if state ~= 'closed' then
      if probe ~= '' then
        fleet.prober, fleet.others = tenant, ''
      elseif tenant ~= fleet.prober then
        fleet.others = '1'
      end
    else
      state, granted, wait, probe = breaker_admit(own, now, probe_id, lease, cooldown, false)
    end
    host_save(fleet_key, fleet, ttl)
    host_save(own_key, own, ttl)
  end
  if state == 'closed' then
    granted, wait, rate = fair_take(h, now, tenant, n, backlogged, size, KEYS[2], KEYS[3])
  end
  out[#out + 1] = granted
  out[#out + 1] = wait
  out[#out + 1] = state
  out[#out + 1] = probe
  out[#out + 1] = tostring(rate)
end
host_save(KEYS[1], h, ttl)
for i = 2, 3 do
  redis.call('PEXPIRE', KEYS[i], ttl)
end
return out
