-- Take up to N requests from one host's fleet-wide budget, or the one probe of its breaker.
-- Closed breaker: as many as the bucket holds; the rest wait until the next token. Open: none
-- until the cool-down ends; then one request (the probe) and, while it is out (half-open),
-- none until it reports or its lease lapses. A call repeated after its reply was lost only
-- leaves budget unused (a lost probe's lease lapses and another request probes).
-- KEYS: host state
-- ARGV: host, n, limit (req/s), burst, probe id, probe lease ms, recheck ms, ttl ms
-- Returns {granted, wait ms for the rest, budget (requests/s, as text: unrounded, however
-- small), breaker state, probe id or ''}; breaker state: 'closed', 'open' or 'half_open'.
local now = now_ms()
local h = host_load(KEYS[1])
local n, limit, burst = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
h.host, h.limit, h.burst, h.seen = ARGV[1], limit, burst, now
host_refill(h, now, limit, burst)
local state = h.state or 'closed'
local granted, wait, probe = 0, 0, ''
if state == 'closed' then
  granted = math.min(n, math.floor(h.tokens))
  h.tokens = h.tokens - granted
  if granted < n then
    wait = math.ceil((1 - h.tokens) * 1000 / h.rate)
  end
else
  local wait_until = num(h.wait_until, 0)
  if now < wait_until then
    wait = wait_until - now
    if state == 'half_open' then
      wait = math.min(wait, tonumber(ARGV[7]))
    end
  else
    granted, probe, state = 1, ARGV[5], 'half_open'
    h.probe = probe
    h.wait_until = now + tonumber(ARGV[6])
    wait = tonumber(ARGV[7])
  end
end
h.state = state
host_save(KEYS[1], h, tonumber(ARGV[8]))
return {granted, wait, tostring(h.rate), state, probe}
