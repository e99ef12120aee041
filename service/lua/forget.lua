-- Delete a terminal watch whose retention has ended, with its index entries and counts.
-- KEYS: expiry, doc, deliveries, index, index:<state>, counts
-- ARGV: id, state
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
local now = now_ms()
if not score or tonumber(score) > now then
  return 0
end
redis.call('ZREM', KEYS[1], ARGV[1])
local raw = redis.call('GET', KEYS[2])
if raw then
  local webhook = cjson.decode(raw).webhook
  redis.call('DEL', KEYS[2], KEYS[3])
  redis.call('ZREM', KEYS[4], ARGV[1])
  redis.call('ZREM', KEYS[5], ARGV[1])
  redis.call('HINCRBY', KEYS[6], ARGV[2], -1)
  if webhook and webhook.state ~= 'none' then
    redis.call('HINCRBY', KEYS[6], 'wh:' .. webhook.state, -1)
  end
end
return 1
