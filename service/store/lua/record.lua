-- Record polls of pending watches of one partition and schedule their next ones, each fenced
-- by its lease.
-- KEYS: schedule, leases, listening, callbacks, then the document of each poll, in order
-- ARGV: events channel prefix, then one per poll: "<id> <token> <due ms> <doc JSON>"
-- The event streams of each saved watch hear of it on its channel (prefix .. id), while any
-- stream of the partition is open (`listening` exists): on a cluster a PUBLISH goes to every
-- node, so polls nobody follows are not published.
-- A push callback that came during a poll owes that very poll (same id and token) an early next
-- one (callback.lua): it is due at the owed time (or now, if that passed) when that is sooner.
-- Returns, in order, 1 per saved poll and 0 per lost lease (that watch is left unchanged); a
-- poll saved by an earlier run of this very call (a reply lost, the call repeated) answers 1.
local saved = {}
local publish = redis.call('EXISTS', KEYS[3]) == 1
local owed = redis.call('ZCARD', KEYS[4]) > 0
for i = 2, #ARGV do
  local poll = ARGV[i]
  local id_end = string.find(poll, ' ', 1, true)
  local token_end = string.find(poll, ' ', id_end + 1, true)
  local due_end = string.find(poll, ' ', token_end + 1, true)
  local id = string.sub(poll, 1, id_end - 1)
  local doc = string.sub(poll, due_end + 1)
  local doc_key = KEYS[3 + i]
  local token = string.sub(poll, id_end + 1, token_end - 1)
  if holds_lease(KEYS[2], id, token) then
    local due = string.sub(poll, token_end + 1, due_end - 1)
    if owed then
      local mark = id .. ' ' .. token
      local early = redis.call('ZSCORE', KEYS[4], mark)
      if early then
        redis.call('ZREM', KEYS[4], mark)
        early = math.max(tonumber(early), now_ms())
        if early < tonumber(due) then
          due = early
        end
      end
    end
    redis.call('SET', doc_key, doc)
    redis.call('ZADD', KEYS[1], due, id)
    redis.call('HDEL', KEYS[2], id)
    if publish then
      redis.call('PUBLISH', ARGV[1] .. id, '')
    end
    saved[#saved + 1] = 1
  elseif redis.call('GET', doc_key) == doc then
    saved[#saved + 1] = 1
  else
    saved[#saved + 1] = 0
  end
end
return saved
