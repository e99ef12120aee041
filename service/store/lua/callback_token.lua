-- Accept one more push-callback token for a pending watch: its hash (never the token) joins the
-- watch's callback hash, which expires a day after the watch's deadline (callbacks to an ended
-- watch are refused by callback.lua anyway; this only bounds the memory).
-- KEYS: doc, callback   ARGV: token hash, most tokens per watch
-- Returns 1 when added, 0 when the watch is missing or ended, or already has the most tokens.
local raw = redis.call('GET', KEYS[1])
if not raw then
  return 0
end
local doc = cjson.decode(raw)
if doc.state ~= 'pending' then
  return 0
end
if redis.call('HEXISTS', KEYS[2], 'h:' .. ARGV[1]) == 1 then
  return 1  -- this very call, repeated after its reply was lost
end
local tokens = 0
local fields = redis.call('HKEYS', KEYS[2])
for _, field in ipairs(fields) do
  if string.sub(field, 1, 2) == 'h:' then
    tokens = tokens + 1
  end
end
if tokens >= tonumber(ARGV[2]) then
  return 0
end
redis.call('HSET', KEYS[2], 'h:' .. ARGV[1], '1')
redis.call('PEXPIREAT', KEYS[2], num(doc.deadline, now_ms()) + 86400000)
return 1
