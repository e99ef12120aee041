-- Prepended to every script by `service.store.scripts.load_scripts`: the helpers scripts share.

-- Redis server time in milliseconds: the one clock that decides what is due.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- A document's webhook, its fields left out at their defaults filled in (`WEBHOOK_DEFAULTS`, put
-- before this prelude by `load_scripts` from `codec.WEBHOOK_DEFAULTS`, their one home).
local function webhook_of(doc)
  local webhook = doc.webhook or {}
  for field, default in pairs(WEBHOOK_DEFAULTS) do
    if webhook[field] == nil then
      webhook[field] = default
    end
  end
  doc.webhook = webhook
  return webhook
end

-- A stored number, or `default` when missing or not a finite number.
local function num(value, default)
  local n = tonumber(value)
  if n == nil or n ~= n or n == math.huge or n == -math.huge then
    return default
  end
  return n
end

-- The lease check (fencing): does `token`, given at claim, still hold item `id`?
-- A token is fixed for the life of a claim; extending a lease moves only its expiry.
local function holds_lease(leases, id, token)
  return redis.call('HGET', leases, id) == token
end

-- Tell the tenant's streams (the dashboard's) that watch `id` was created, ended or had a
-- webhook attempt: they read it again. Polls are not sent here, only to the watch's channel.
local function notify_tenant(events, tenant, id)
  redis.call('PUBLISH', events .. '@' .. tenant, id)
end

-- End a watch: save its terminal document, take it off the schedule (dropping any lease), move
-- it from the pending index to its state's, count it, start its retention clock and, if it has
-- a webhook, queue that in the outbox - all in the caller's one atomic step.
-- k: {schedule, leases, doc, index:pending, index:<state>, counts, expiry, outbox}
-- The watch's event streams hear of it on channel `events` .. id, its tenant's on
-- `events` .. '@' .. tenant (see `notify_tenant`).
local function end_watch(k, id, encoded, state, now, retention_ms, queue_webhook, events, tenant)
  redis.call('SET', k[3], encoded)
  redis.call('PUBLISH', events .. id, '')
  notify_tenant(events, tenant, id)
  redis.call('ZREM', k[1], id)
  redis.call('HDEL', k[2], id)
  redis.call('ZREM', k[4], id)
  redis.call('ZADD', k[5], 0, id)
  redis.call('HINCRBY', k[6], 'pending', -1)
  redis.call('HINCRBY', k[6], state, 1)
  redis.call('ZADD', k[7], now + retention_ms, id)
  if queue_webhook then
    redis.call('ZADD', k[8], now, id)
    redis.call('HINCRBY', k[6], 'wh:pending', 1)
  end
end
