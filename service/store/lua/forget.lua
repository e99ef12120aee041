-- Delete a terminal watch whose retention has ended, with its index entries and counts.
-- A watch whose webhook is still being delivered is kept (checked again after recheck_ms):
-- its delivery settles first.
-- KEYS: expiry, doc, deliveries, index, index:<state>, counts
-- ARGV: id, state, recheck_ms
-- Returns 1 when the watch is gone, 0 when it is kept (or not yet due)
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
local now = now_ms()
if not score or tonumber(score) > now then
  return 0
end
local raw = redis.call('GET', KEYS[2])
if raw then
  local webhook = webhook_of(cjson.decode(raw))
  if webhook.state == 'pending' then
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
    return 0
  end
  redis.call('DEL', KEYS[2], KEYS[3])
  redis.call('ZREM', KEYS[4], ARGV[1])
  redis.call('ZREM', KEYS[5], ARGV[1])
  redis.call('HINCRBY', KEYS[6], ARGV[2], -1)
  if webhook.state ~= 'none' then
    redis.call('HINCRBY', KEYS[6], 'wh:' .. webhook.state, -1)
  end
end
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
