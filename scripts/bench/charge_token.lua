-- wrk script: charge-by-token through the connector endpoint (sandbox processor approves).
-- Arguments: Basic auth header value, file with one token per line.
local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", string.format("c%d-%d-%d", os.time(), #threads, math.random(1, 1000000000)))
end

function init(args)
  auth = args[1]
  tokens = {}
  for line in io.lines(args[2]) do table.insert(tokens, line) end
  counter = 0
  bad = 0
end

function request()
  counter = counter + 1
  local body = string.format(
    '{"method":"charge","transaction_id":"%s-%d","token":"%s","amount":"1.00","currency_code":"USD"}',
    tid, counter, tokens[(counter % #tokens) + 1])
  return wrk.format("POST", "/", {["Authorization"] = auth, ["Content-Type"] = "application/json"}, body)
end

function response(status, headers, body)
  if status ~= 200 or not string.find(body, '"charge_id":"ch_sandbox_', 1, true) then bad = bad + 1 end
end

function done(summary, latency, requests)
  local bad = 0
  for _, t in ipairs(threads) do bad = bad + (t:get("bad") or 0) end
  local e = summary.errors
  io.write(string.format("RESULT rps=%.1f p50=%.2f p95=%.2f p99=%.2f errors=%d requests=%d\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(50) / 1000, latency:percentile(95) / 1000,
    latency:percentile(99) / 1000, bad + e.connect + e.read + e.write + e.status + e.timeout, summary.requests))
end
