-- Move a watch to its terminal state and, in the same step, queue its webhook (the outbox).
-- KEYS: schedule, leases, doc, index:pending, index:<state>, counts, expiry, outbox
-- ARGV: id, token, doc JSON, state, retention_ms, has_webhook ('1' or '0'), events channel prefix,
--       tenant
-- Returns 1, or 0 when the lease was lost (nothing is changed). A call repeated after its reply
-- was lost finds its own document stored (the lease it ended is gone) and answers 1 again.
if not holds_lease(KEYS[2], ARGV[1], ARGV[2]) then
  return redis.call('GET', KEYS[3]) == ARGV[3] and 1 or 0
end
end_watch(KEYS, ARGV[1], ARGV[3], ARGV[4], now_ms(), tonumber(ARGV[5]), ARGV[6] == '1', ARGV[7],
  ARGV[8])
return 1
