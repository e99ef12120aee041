-- Record jobs of one upstream seen to completion in its learned duration histogram
-- (`service.durations`). Each sample comes spread over its bins by `client.learned.spread`
-- (shares summing to 1). Weights are kept multiplied by a scale that grows by `growth` per
-- sample, so decaying every older sample costs one multiplication: the reader divides by the
-- scale. Past `renormalize_above`, the weights are divided by the scale once (O(bins), every few
-- thousand samples) and those too small to matter dropped.
-- A hash that is not ours (another type, or a scale that is not a positive number) starts over;
-- a bin that is not a number counts as 0 (and a field that is not a bin goes at renormalizing).
-- KEYS: the upstream's histogram
-- ARGV: upstream key, growth per sample, renormalize above, smallest weight kept, ttl ms, then
--       per sample: n, then n pairs of bin, share
-- Returns the number of samples recorded.

local key = KEYS[1]
local kind = redis.call('TYPE', key)['ok']
local scale = nil
if kind == 'hash' then
  scale = num(redis.call('HGET', key, 'scale'), nil)
end
if kind ~= 'none' and not (scale and scale > 0) then
  redis.call('DEL', key)
  scale = nil
end

local growth, renormalize, smallest = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local added = {}
local samples, i = 0, 6
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  scale = scale and scale * growth or 1
  for j = i + 1, i + 2 * n, 2 do
    added[ARGV[j]] = (added[ARGV[j]] or 0) + tonumber(ARGV[j + 1]) * scale
  end
  samples = samples + 1
  i = i + 1 + 2 * n
end
if samples == 0 then
  return 0
end

local fields = {'upstream', ARGV[1], 'scale', string.format('%.17g', scale)}
for bin, weight in pairs(added) do
  local stored = num(redis.call('HGET', key, bin), 0)
  fields[#fields + 1] = bin
  fields[#fields + 1] = string.format('%.17g', math.max(0, stored) + weight)
end
redis.call('HSET', key, unpack(fields))

if scale > renormalize then
  local all = redis.call('HGETALL', key)
  local kept, dropped = {'scale', '1'}, {}
  for f = 1, #all, 2 do
    local name = all[f]
    if name ~= 'upstream' and name ~= 'scale' then
      local weight = num(all[f + 1], 0) / scale
      if weight >= smallest and string.match(name, '^%d+$') then
        kept[#kept + 1] = name
        kept[#kept + 1] = string.format('%.17g', weight)
      else
        dropped[#dropped + 1] = name
      end
    end
  end
  if #dropped > 0 then
    redis.call('HDEL', key, unpack(dropped))
  end
  redis.call('HSET', key, unpack(kept))
end
redis.call('PEXPIRE', key, tonumber(ARGV[5]))
return samples
