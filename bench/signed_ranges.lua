-- wrk request script: GET a RANDOM signed /data url per request, from a list made beforehand
-- (each url signs its own byte range, so the ranges cannot be drawn here).
--
--   wrk -t2 -c64 -d5s -s bench/signed_ranges.lua http://127.0.0.1:8088 -- urls.tsv SEED
--
-- args: a file of lines "<path?query>\t<Range value>", a seed (each thread adds its
-- number). The last line printed is one JSON object, as random_ranges.lua prints it.

dofile(debug.getinfo(1, "S").source:match("^@(.-)[^/]*$") .. "wrk_common.lua")

function init(args)
  targets, ranges = {}, {}
  for line in io.lines(args[1]) do
    local target, range = string.match(line, "^([^\t]+)\t(.+)$")
    table.insert(targets, target)
    table.insert(ranges, range)
  end
  math.randomseed(tonumber(args[2] or "1") * 1000 + (thread_no or 0))
end

function request()
  local i = math.random(#targets)
  return wrk.format("GET", targets[i], {["Range"] = ranges[i]})
end
