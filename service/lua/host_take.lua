-- Take requests from one host's fleet-wide budget for each of its ports, or the one probe of a
-- port's breaker. Closed breaker: as many as the bucket holds (one bucket for every port of the
-- host); the rest wait until the next token. Open: none until the cool-down ends; then one
-- request (the probe) and, while it is out (half-open), none until it reports or its lease
-- lapses: the others are told to wait for the lease to end, at most a cool-down (so that the
-- polls of a host that stays down come back once per cool-down, not every second). A call
-- repeated after its reply was lost only leaves budget unused (a lost probe's
-- lease lapses and another request probes).
-- KEYS: host state (the budget), then the breaker of each port asked for (the same hash tag)
-- ARGV: host, limit (req/s), burst, probe id, probe lease ms, cooldown ms, ttl ms, then for
--       each breaker key: its port, n
-- Returns {budget (requests/s, as text: unrounded, however small), then per port: granted,
-- wait ms for the rest, breaker state, probe id or ''}; breaker state: 'closed', 'open' or
-- 'half_open'.
local now = now_ms()
local h = host_load(KEYS[1])
local limit, burst = tonumber(ARGV[2]), tonumber(ARGV[3])
local lease, cooldown, ttl = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
h.host, h.limit, h.burst, h.seen = ARGV[1], limit, burst, now
host_refill(h, now, limit, burst)
local out = {tostring(h.rate)}
for i = 2, #KEYS do
  local port, n = ARGV[6 + 2 * i - 2], tonumber(ARGV[7 + 2 * i - 2])
  local b = host_load(KEYS[i])
  b.port, b.seen = port, now
  local state = b.state or 'closed'
  local granted, wait, probe = 0, 0, ''
  if state == 'closed' then
    granted = math.min(n, math.floor(h.tokens))
    h.tokens = h.tokens - granted
    if granted < n then
      wait = math.ceil((1 - h.tokens) * 1000 / h.rate)
    end
  else
    local wait_until = num(b.wait_until, 0)
    if now < wait_until then
      wait = wait_until - now
      if state == 'half_open' then
        wait = math.min(wait, cooldown)
      end
    else
      granted, probe, state = 1, ARGV[4], 'half_open'
      b.probe = probe
      b.wait_until = now + lease
      wait = math.min(lease, cooldown)
    end
  end
  b.state = state
  host_save(KEYS[i], b, ttl)
  out[#out + 1] = granted
  out[#out + 1] = wait
  out[#out + 1] = state
  out[#out + 1] = probe
end
host_save(KEYS[1], h, ttl)
return out
