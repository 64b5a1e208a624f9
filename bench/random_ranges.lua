-- wrk request script: GET a RANDOM byte range of one file per request.
--
--   wrk -t2 -c64 -d5s -s bench/random_ranges.lua http://127.0.0.1:8080 -- /data/blob.bin \
--       67108864 65536 SEED
--
-- args: the path, the file's size, the range length, a seed (each thread adds its number).
-- Ranges start on 4 KiB boundaries. The last line printed is one JSON object, as
-- random_regions.lua prints it.

dofile(debug.getinfo(1, "S").source:match("^@(.-)[^/]*$") .. "wrk_common.lua")

function init(args)
  path = args[1]
  size, length = tonumber(args[2]), tonumber(args[3])
  math.randomseed(tonumber(args[4] or "1") * 1000 + (thread_no or 0))
  slots = math.floor((size - length) / 4096)
end

function request()
  local start = math.random(0, slots) * 4096
  return wrk.format("GET", path, {["Range"] = string.format("bytes=%d-%d", start,
    start + length - 1)})
end
