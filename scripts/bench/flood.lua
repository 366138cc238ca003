-- wrk script: a bad-credential flood. Every request carries Basic credentials that fail: half a
-- random unknown username, half a real username (from the file in the first argument, one a
-- line) with a wrong secret. Counts answers by status.
local users = {}
local counts = {}
local threads = {}

local function b64(data)
  local chars = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'
  return ((data:gsub('.', function(x)
    local r, b = '', x:byte()
    for i = 8, 1, -1 do r = r .. (b % 2 ^ i - b % 2 ^ (i - 1) > 0 and '1' or '0') end
    return r
  end) .. '0000'):gsub('%d%d%d?%d?%d?%d?', function(x)
    if #x < 6 then return '' end
    local c = 0
    for i = 1, 6 do c = c + (x:sub(i, i) == '1' and 2 ^ (6 - i) or 0) end
    return chars:sub(c + 1, c + 1)
  end) .. ({ '', '==', '=' })[#data % 3 + 1])
end

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  for line in io.lines(args[1]) do table.insert(users, line) end
  math.randomseed(os.time() + math.random(1, 1000000))
  counter = 0
  s401, s429, other = 0, 0, 0
end

function request()
  counter = counter + 1
  local user
  if counter % 2 == 0 then
    user = users[(counter / 2) % #users + 1]
  else
    user = string.format("pvc_%010x%010x", math.random(0, 2147483647), math.random(0, 2147483647))
  end
  local auth = "Basic " .. b64(user .. ":pvs_wrong" .. counter)
  return wrk.format("POST", "/", {["Authorization"] = auth}, '{"method":"tokenize"}')
end

function response(status, headers, body)
  if status == 401 then s401 = s401 + 1 elseif status == 429 then s429 = s429 + 1 else other = other + 1 end
end

function done(summary, latency, requests)
  local a, b, c = 0, 0, 0
  for _, t in ipairs(threads) do
    a = a + (t:get("s401") or 0); b = b + (t:get("s429") or 0); c = c + (t:get("other") or 0)
  end
  io.write(string.format("RESULT rps=%.1f s401=%d s429=%d other=%d errors=%d\n",
    summary.requests / (summary.duration / 1e6), a, b, c,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
