-- Register a watch, or answer an earlier registration with the same idempotency key.
-- KEYS: doc, schedule, index, index:pending, counts[, idempotency]
-- ARGV: id, doc JSON (without times), max_wait_ms, body fingerprint, idempotency TTL s,
--       most pending watches of the tenant in this partition, events channel prefix
-- The id is drawn by the caller: finding it means this very call already ran (a client retry
-- after a lost reply or a timeout), so answer it again without counting the watch twice.
-- Returns {'created', doc} | {'earlier', earlier id} (the caller reads that watch: same slot)
--       | {'conflict', earlier id} | {'over_limit', pending count}
local again = redis.call('GET', KEYS[1])
if again then
  return {'created', again}
end
local now = now_ms()
if KEYS[6] then
  local earlier = redis.call('GET', KEYS[6])
  if earlier then
    local sep = string.find(earlier, ' ', 1, true)
    local earlier_id = string.sub(earlier, 1, sep - 1)
    if string.sub(earlier, sep + 1) ~= ARGV[4] then
      return {'conflict', earlier_id}
    end
    return {'earlier', earlier_id}
  end
end
local pending = tonumber(redis.call('HGET', KEYS[5], 'pending') or '0')
if pending >= tonumber(ARGV[6]) then
  return {'over_limit', tostring(pending)}
end
local doc = cjson.decode(ARGV[2])
doc.created_at = now
doc.updated_at = now
doc.next_poll_at = now
doc.deadline = now + tonumber(ARGV[3])
local encoded = cjson.encode(doc)
redis.call('SET', KEYS[1], encoded)
redis.call('ZADD', KEYS[2], now, ARGV[1])
redis.call('ZADD', KEYS[3], 0, ARGV[1])
redis.call('ZADD', KEYS[4], 0, ARGV[1])
redis.call('HINCRBY', KEYS[5], 'pending', 1)
if KEYS[6] then
  redis.call('SET', KEYS[6], ARGV[1] .. ' ' .. ARGV[4], 'EX', ARGV[5])
end
notify_tenant(ARGV[7], doc.tenant, ARGV[1])
return {'created', encoded}
