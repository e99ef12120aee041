-- Why the fence refused a write of item `id` under `token` (or found its lease gone): 'lost'
-- when another claim took the item (it holds it, or took it and moved it on: a poll recorded,
-- a watch finished, a webhook delivered), 'ended' when its watch ended with no worker holding
-- it (cancelled) or is gone (retention), 'held' when `token` still holds it after all.
-- Every terminal state but `cancelled` is written under a lease (finish.lua), so a watch found
-- completed, error or timeout was ended by whoever took the lease: that is 'lost'.
-- KEYS: leases, doc   ARGV: id, token
local holder = redis.call('HGET', KEYS[1], ARGV[1])
if holder == ARGV[2] then
  return 'held'
end
if holder then
  return 'lost'
end
local raw = redis.call('GET', KEYS[2])
if not raw or cjson.decode(raw).state == 'cancelled' then
  return 'ended'
end
return 'lost'
