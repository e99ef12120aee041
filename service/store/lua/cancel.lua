-- Cancel a pending watch of the tenant. A worker holding its lease loses it (fencing).
-- Safe to repeat: a cancel that already ran with this request id answers 'cancelled' again.
-- KEYS: schedule, leases, doc, index:pending, index:cancelled, counts, expiry, outbox
-- ARGV: id, tenant, retention_ms, request id, events channel prefix
-- Returns {'cancelled', doc} | {'conflict', doc} | {'missing'}
local raw = redis.call('GET', KEYS[3])
if not raw then
  return {'missing'}
end
local doc = cjson.decode(raw)
if doc.tenant ~= ARGV[2] then
  return {'missing'}
end
if doc.state ~= 'pending' then
  if doc.state == 'cancelled' and doc.cancel_request == ARGV[4] then
    return {'cancelled', raw}
  end
  return {'conflict', raw}
end
local now = now_ms()
doc.state = 'cancelled'
doc.updated_at = now
doc.finished_at = now
doc.next_poll_at = nil  -- stored documents leave nulls out (service.docs)
doc.cancel_request = ARGV[4]
local encoded = cjson.encode(doc)
end_watch(KEYS, ARGV[1], encoded, 'cancelled', now, tonumber(ARGV[3]), false, ARGV[5], ARGV[2])
return {'cancelled', encoded}
