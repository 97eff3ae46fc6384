-- GCRA decision for one key, made atomically on the Redis server's clock so that
-- replicas with skewed clocks agree. Same arithmetic as `algo::gcra`.
--
-- KEYS[1]  theoretical arrival time (TAT), µs since the Unix epoch
-- ARGV[1]  emission interval T, µs
-- ARGV[2]  tolerance (burst * T), µs
-- Returns  {allowed (0|1), remaining, reset_after µs, retry_after µs}

-- TIME before a write needs effects replication; the default (and a no-op) from Redis 5.
if redis.replicate_commands then redis.replicate_commands() end

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])

local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local allow_at = tat - tolerance
if now < allow_at then
  return {0, 0, tat - now, allow_at - now}
end

local new_tat = tat + interval
-- The key only matters until the TAT is reached; '%d' keeps all digits of the number.
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
return {1, math.floor((now + tolerance - tat) / interval), new_tat - now, 0}
