-- GCRA decisions for one or more keys, made atomically on the Redis server's clock so
-- that replicas with skewed clocks agree. Same arithmetic as `algo::gcra`. A gateway
-- thread sends the decisions it gathered in one turn of its event loop together; they are
-- made in order, so two for one key see each other. Each distinct key is read once and
-- written once, however many decisions it has in the batch.
--
-- KEYS[i]       theoretical arrival time (TAT), µs since the Unix epoch
-- ARGV[2i - 1]  emission interval T, µs
-- ARGV[2i]      tolerance (burst * T), µs
-- Returns       per key, four numbers: allowed (0|1), remaining, reset_after µs,
--               retry_after µs

-- TIME before a write needs effects replication; the default (and a no-op) from Redis 5.
if redis.replicate_commands then redis.replicate_commands() end

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local tats = {}
local changed = {}
local out = {}

for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i - 1])
  local tolerance = tonumber(ARGV[2 * i])
  local tat = tats[key]
  if tat == nil then
    tat = tonumber(redis.call('GET', key)) or now
  end
  if tat < now then tat = now end
  tats[key] = tat
  local allow_at = tat - tolerance
  local n = #out
  if now < allow_at then
    out[n + 1], out[n + 2], out[n + 3], out[n + 4] = 0, 0, tat - now, allow_at - now
  else
    local new_tat = tat + interval
    tats[key] = new_tat
    changed[key] = true
    out[n + 1], out[n + 2], out[n + 3], out[n + 4] = 1, math.floor((now + tolerance - tat) / interval), new_tat - now, 0
  end
end

for key in pairs(changed) do
  local tat = tats[key]
  -- The key only matters until the TAT is reached; '%d' keeps all digits of the number.
  redis.call('SET', key, string.format('%d', tat), 'PX', math.ceil((tat - now) / 1000))
end
return out
