-- wrk script: POST one JSON body over and over (the body's file and an optional bearer
-- token come from the environment), and print the summary as one JSON line for bench.load.
local file = assert(io.open(os.getenv("BENCH_BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = "application/json"
local token = os.getenv("BENCH_TOKEN")
if token and #token > 0 then
  wrk.headers["Authorization"] = "Bearer " .. token
end

-- BENCH_KEY_PREFIX set: every request carries its own Idempotency-Key (prefix, thread,
-- count), so the broker stores a key with every message and replays none.
local prefix = os.getenv("BENCH_KEY_PREFIX")
if prefix and #prefix > 0 then
  local threads = 0
  function setup(thread)
    threads = threads + 1
    thread:set("thread_id", threads)
  end
  local sent = 0
  function request()
    sent = sent + 1
    wrk.headers["Idempotency-Key"] = prefix .. "-" .. thread_id .. "-" .. sent
    return wrk.format()
  end
end

-- No response() callback: defining one makes wrk hand every answer to Lua, which costs
-- more than the broker's own work. Non-2xx answers are counted in summary.errors.status.
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_s": %.6f, "non_2xx": %d, "socket_errors": %d,'
      .. ' "p50_ms": %.3f, "p99_ms": %.3f}\n',
    summary.requests, summary.duration / 1e6, e.status,
    e.connect + e.read + e.write + e.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
