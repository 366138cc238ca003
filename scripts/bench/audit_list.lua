-- wrk script: GET /v1/audit/events with queries picked at random from a file (one query string
-- per line, e.g. `token=tok_...` or `since=...&until=...&cursor=...`).
-- Arguments: Basic auth header value of an audit:read credential, the file. Anything but a 200
-- with an events array counts as an error; the number of events returned is summed.
local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("seed", #threads * 7919 + os.time())
end

function init(args)
  auth = args[1]
  queries = {}
  for line in io.lines(args[2]) do table.insert(queries, line) end
  math.randomseed(seed)
  bad = 0
  returned = 0
end

function request()
  local q = queries[math.random(1, #queries)]
  return wrk.format("GET", "/v1/audit/events?" .. q, {["Authorization"] = auth})
end

function response(status, headers, body)
  if status ~= 200 or not string.find(body, '"events":[', 1, true) then
    bad = bad + 1
  else
    local _, n = string.gsub(body, '"actor_kind":', '')
    returned = returned + n
  end
end

function done(summary, latency, requests)
  local bad, returned = 0, 0
  for _, t in ipairs(threads) do
    bad = bad + (t:get("bad") or 0)
    returned = returned + (t:get("returned") or 0)
  end
  local e = summary.errors
  io.write(string.format("RESULT rps=%.1f p50=%.2f p95=%.2f p99=%.2f max=%.2f errors=%d requests=%d returned=%d\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(50) / 1000, latency:percentile(95) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000, bad + e.connect + e.read + e.write + e.status + e.timeout,
    summary.requests, returned))
end
