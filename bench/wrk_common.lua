-- What every wrk request script here shares (each loads it with dofile): thread numbers for
-- the scripts' seeds, and the one JSON line with the figures that bench/http_load.py reads
-- when wrk is done: requests, seconds, req/s, latency percentiles in microseconds, error
-- counts (non-2xx/3xx statuses; connect/read/write/timeout), bytes received.

local thread_no = 0

function setup(thread)
  thread_no = thread_no + 1
  thread:set("thread_no", thread_no)
end

function done(summary, latency, requests)
  local secs = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "seconds": %.3f, "rps": %.1f, "p50_us": %d, "p90_us": %d, ' ..
    '"p99_us": %d, "max_us": %d, "status_errors": %d, "socket_errors": %d, "bytes": %d}\n',
    summary.requests, secs, summary.requests / secs, latency:percentile(50),
    latency:percentile(90), latency:percentile(99), latency.max, e.status,
    e.connect + e.read + e.write + e.timeout, summary.bytes))
end
