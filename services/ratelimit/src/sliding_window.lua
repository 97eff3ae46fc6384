-- Sliding-window decision for one key, made atomically on the Redis server's clock.
-- Same arithmetic as `algo::sliding_window`: the previous fixed window's count is weighed
-- by the part of it still inside the sliding window (fixed point, out of ARGV[3]).
--
-- KEYS[1]  hash {w = window index, c = count in window w, p = count in window w - 1}
-- ARGV[1]  period, ms
-- ARGV[2]  quota (rate + burst)
-- ARGV[3]  weight denominator
-- Returns  {allowed (0|1), remaining, reset_after ms, retry_after ms}

if redis.replicate_commands then redis.replicate_commands() end

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local period = tonumber(ARGV[1])
local quota = tonumber(ARGV[2])
local one = tonumber(ARGV[3])

local window = math.floor(now / period)
local stored = redis.call('HMGET', KEYS[1], 'w', 'c', 'p')
local w = tonumber(stored[1])
local current, previous = 0, 0
if w == window then
  current, previous = tonumber(stored[2]) or 0, tonumber(stored[3]) or 0
elseif w == window - 1 then
  previous = tonumber(stored[2]) or 0
elseif w ~= nil and w > window then
  -- This server's clock is behind the one that wrote the counters: keep the counts.
  window = w
  current, previous = tonumber(stored[2]) or 0, tonumber(stored[3]) or 0
end

local elapsed = now - window * period
if elapsed < 0 then elapsed = 0 end

local function weight(e)
  return math.floor((period - e) * one / period)
end
-- Smallest elapsed time at which the weight is at most max_weight (< one).
local function first_elapsed_with_weight_at_most(max_weight)
  return math.floor(period * (one - max_weight - 1) / one) + 1
end

local estimate = previous * weight(elapsed) + current * one
local full = quota * one
if estimate >= full then
  local retry = nil
  if current < quota and previous > 0 then
    local at = first_elapsed_with_weight_at_most(math.floor(((quota - current) * one - 1) / previous))
    if at < period then retry = at - elapsed end
  end
  if retry == nil then
    local at = 0
    if current >= quota then at = first_elapsed_with_weight_at_most(math.floor((full - 1) / current)) end
    retry = period - elapsed + at
  end
  local reset = period - elapsed
  if current > 0 then reset = 2 * period - elapsed end
  return {0, 0, reset, retry}
end

current = current + 1
redis.call('HSET', KEYS[1], 'w', string.format('%d', window), 'c', current, 'p', previous)
redis.call('PEXPIRE', KEYS[1], 2 * period)
estimate = estimate + one
local remaining = 0
if full > estimate then remaining = math.floor((full - estimate + one - 1) / one) end
return {1, remaining, 2 * period - elapsed, 0}
