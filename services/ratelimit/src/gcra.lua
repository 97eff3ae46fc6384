-- GCRA decisions for one or more keys, made atomically on the Redis server's clock so
-- that replicas with skewed clocks agree. A gateway thread sends the decisions it
-- gathered together, counted per key: the script takes `count` arrivals at once for each
-- key, in order, each admitted while TAT - tolerance <= now, exactly as `count` single
-- decisions in a row at the same instant would be. Each key is read once and written
-- once, however many decisions it carries, and the reply does not grow with them either.
--
-- KEYS[i]       theoretical arrival time (TAT), µs since the Unix epoch
-- ARGV[3i - 2]  emission interval T, µs
-- ARGV[3i - 1]  tolerance (burst * T), µs
-- ARGV[3i]      decisions for this key (at least 1)
-- Returns       now, then for each key the TAT its first decision saw (never before
--               now). The caller replays `algo::gcra` from there for each decision.

-- TIME before a write needs effects replication; the default (and a no-op) from Redis 5.
if redis.replicate_commands then redis.replicate_commands() end

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local tats = {}
local changed = {}
local out = { now }

for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[3 * i - 2])
  local tolerance = tonumber(ARGV[3 * i - 1])
  local count = tonumber(ARGV[3 * i])
  local tat = tats[key]
  if tat == nil then
    tat = tonumber(redis.call('GET', key)) or now
  end
  if tat < now then tat = now end
  out[i + 1] = tat
  -- Decision j (from 0) is admitted while tat + j * T - tolerance <= now.
  if now >= tat - tolerance then
    local admitted = math.min(count, math.floor((now + tolerance - tat) / interval) + 1)
    tat = tat + admitted * interval
    changed[key] = true
  end
  tats[key] = tat
end

for key in pairs(changed) do
  local tat = tats[key]
  -- The key only matters until the TAT is reached; '%d' keeps all digits of the number.
  redis.call('SET', key, string.format('%d', tat), 'PX', math.ceil((tat - now) / 1000))
end
return out
