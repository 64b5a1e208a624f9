-- wrk request script: a RANDOM region ticket per request, so no cache of identical tickets
-- is measured (tens of thousands of distinct requests per run).
--
--   wrk -t2 -c16 -d5s -s bench/random_regions.lua http://127.0.0.1:8080 -- \
--       /reads/deep15 chrD:10000000 1000 20000 SEED [FORMAT]
--
-- args: the path to ask (ID included), references as name:length[,name:length...], the
-- smallest and largest region span (bp), a seed (each thread adds its number to it), and
-- optionally a format= value. The last line printed is one JSON object with the figures
-- (bench/run.py parses it): requests, seconds, req/s, latency percentiles in microseconds,
-- error counts (non-2xx/3xx statuses, connect/read/write/timeout).

dofile(debug.getinfo(1, "S").source:match("^@(.-)[^/]*$") .. "wrk_common.lua")

function init(args)
  path = args[1]
  refs, lengths = {}, {}
  for name, len in string.gmatch(args[2], "([^,:]+):(%d+)") do
    table.insert(refs, name)
    table.insert(lengths, tonumber(len))
  end
  min_span, max_span = tonumber(args[3]), tonumber(args[4])
  math.randomseed(tonumber(args[5] or "1") * 1000 + (thread_no or 0))
  extra = ""
  if args[6] and args[6] ~= "" then
    extra = "&format=" .. args[6]
  end
end

function request()
  local i = math.random(#refs)
  local len = lengths[i]
  local span = math.random(min_span, max_span)
  if span >= len then span = len - 1 end
  local start = math.random(0, len - span - 1)
  return wrk.format("GET", string.format("%s?referenceName=%s&start=%d&end=%d%s",
    path, refs[i], start, start + span, extra))
end
