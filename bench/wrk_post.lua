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
-- BENCH_REQUESTS set: the thread stops where it makes that many requests (one or a few
-- more or fewer may reach the server: count what the broker took from its stats), and
-- says so by creating BENCH_STOPPED (wrk itself runs out its duration unless
-- interrupted: bench.load does).
local prefix = os.getenv("BENCH_KEY_PREFIX") or ""
local limit = tonumber(os.getenv("BENCH_REQUESTS") or "") or 0
if #prefix > 0 or limit > 0 then
  local threads = 0
  function setup(thread)
    threads = threads + 1
    thread:set("thread_id", threads)
  end
  local fixed = wrk.format()
  local sent = 0
  function request()
    sent = sent + 1
    if sent == limit then
      wrk.thread:stop()
      assert(io.open(os.getenv("BENCH_STOPPED"), "w")):close()
    end
    if #prefix == 0 then
      return fixed
    end
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
