-- A push callback for watch `id` with a token whose hash is `hash`: make the watch due now, at
-- most once per `interval` ms however many callbacks come (the time of the last early poll
-- granted is kept in the watch's callback hash). The callback's body plays no part: the worker
-- confirms by polling the status URL.
--
-- * Not leased (no poll in flight): its due time moves to now, never later than it was (a
--   watch already due is left alone: 'ignored', unless it was never polled: then it is marked
--   `pushed`, so that its first poll is not put off), and its document's `next_poll_at` says so. No
--   worker holds a copy of the document, so this write races no save; a claim after it reads it.
-- * Leased (a poll in flight): a second, concurrent poll is never made. Instead an early poll is
--   owed to the poll in flight: "<id> <its fencing token>" goes in the partition's `callbacks`
--   ZSET, scored `now + interval`. When that very poll is saved (record.lua, same token) it is
--   due at `max(score, save time)` if that is sooner than its backoff says: the confirming poll
--   comes at most one interval after the callback, or right after the poll in flight if that
--   takes longer, and never within an interval of a poll sent before the callback. A poll
--   under another token (the lease lapsed or was given back, and another claim took the watch)
--   was itself sent after the callback, so the mark is not honoured (it is pruned after an hour).
--   A poll that ends the watch (finish.lua) leaves the mark to the pruning too.
-- An ended watch is never touched (no resurrection), and fencing is unchanged: only the due
-- time of an unleased watch, or the mark, is written.
--
-- Unknown watch, token not among its hashes, ended watch: all 'missing' (one answer, no oracle).
-- KEYS: schedule, leases, doc, callback (the watch's token hashes), callbacks (the owed marks)
-- ARGV: id, token hash, interval ms
-- Returns 'accepted' (an early poll granted) | 'ignored' (within the interval, or already due)
--       | 'missing'
local id = ARGV[1]
if redis.call('HEXISTS', KEYS[4], 'h:' .. ARGV[2]) ~= 1 then
  return 'missing'
end
local raw = redis.call('GET', KEYS[3])
if not raw then
  return 'missing'
end
local doc = cjson.decode(raw)
if doc.state ~= 'pending' then
  return 'missing'
end
local now = now_ms()
local interval = tonumber(ARGV[3])
local last = num(redis.call('HGET', KEYS[4], 'early'), nil)
if last ~= nil and now - last < interval then
  return 'ignored'
end
local holder = redis.call('HGET', KEYS[2], id)
if holder then
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now - 3600000)
  local mark = id .. ' ' .. holder
  if redis.call('ZSCORE', KEYS[5], mark) then
    return 'ignored'
  end
  redis.call('ZADD', KEYS[5], now + interval, mark)
else
  local due = redis.call('ZSCORE', KEYS[1], id)
  if due and tonumber(due) <= now and (doc.attempts or 0) == 0 and not doc.pushed then
    -- Due, never claimed yet: its first poll would be put off to initial_wait_time when the
    -- worker claims it (poller.plan_first_poll); `pushed` says poll at once instead.
    doc.pushed = true
    redis.call('SET', KEYS[3], cjson.encode(doc))
    redis.call('HSET', KEYS[4], 'early', now)
    return 'accepted'
  end
  if not due or tonumber(due) <= now then
    return 'ignored'
  end
  redis.call('ZADD', KEYS[1], 'XX', now, id)
  doc.next_poll_at = now
  redis.call('SET', KEYS[3], cjson.encode(doc))
end
redis.call('HSET', KEYS[4], 'early', now)
return 'accepted'
