-- wrk script: unique Twilio tokenize requests, Basic auth from the first script argument.
-- Every response is checked; anything but a token counts as an error.
local threads = {}
local pans = {"4111111111111111", "5555555555554444", "378282246310005", "6011111111111117",
              "3566002020360505", "6200000000000005", "6771798021000008", "30569309025904"}

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", string.format("%d-%d-%d", os.time(), #threads, math.random(1, 1000000000)))
end

function init(args)
  auth = args[1]
  counter = 0
  bad = 0
end

function request()
  counter = counter + 1
  local body = string.format(
    '{"method":"tokenize","transaction_id":"%s-%d","cardnumber":"%s","cvv":"123","expiry_month":"08","expiry_year":"35","postal_code":"94111"}',
    tid, counter, pans[(counter % #pans) + 1])
  return wrk.format("POST", "/", {["Authorization"] = auth, ["Content-Type"] = "application/json"}, body)
end

function response(status, headers, body)
  if status ~= 200 or not string.find(body, '"token_id":"tok_', 1, true) then bad = bad + 1 end
end

function done(summary, latency, requests)
  local bad = 0
  for _, t in ipairs(threads) do bad = bad + (t:get("bad") or 0) end
  local e = summary.errors
  io.write(string.format("RESULT rps=%.1f p50=%.2f p95=%.2f p99=%.2f errors=%d requests=%d\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(50) / 1000, latency:percentile(95) / 1000,
    latency:percentile(99) / 1000, bad + e.connect + e.read + e.write + e.status + e.timeout, summary.requests))
end
