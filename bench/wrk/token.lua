-- wrk script: client_credentials token requests for bench/issuer.py.
--
--   wrk ... -s token.lua <token endpoint URL> -- basic "<Authorization header value>"
--   wrk ... -s token.lua <token endpoint URL> -- pkjwt <assertions file>
--
-- basic: every request is the same POST with an `Authorization: Basic` header.
-- pkjwt: the assertions file holds one ES256 client assertion per line; each is
-- sent exactly once (jti is single use). With several threads, thread k takes
-- lines k, k+n, k+2n, ... When a thread runs out it starts over (the replays are
-- then rejected) and counts the wrap, which the runner reports as a failed run.
--
-- At the end, one line per thread total is printed for the runner to parse:
--   BENCH statuses 200=12345 401=2
--   BENCH wrapped 0

local GRANT = "grant_type=client_credentials&scope=read"
local ASSERTION_TYPE = "urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer"

local threads = {}
local thread_count = 0

-- Runs in the main Lua state, once per thread, before that thread's init().
function setup(thread)
  thread:set("thread_index", thread_count)
  table.insert(threads, thread)
  thread_count = thread_count + 1
  for _, t in ipairs(threads) do
    t:set("thread_total", thread_count)
  end
end

-- Per-thread state (each thread has its own Lua state).
statuses = {}
wrapped = 0
local mode
local bodies = {}
local next_body = 1

function init(args)
  mode = args[1]
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
  wrk.headers["Accept"] = "application/json"
  if mode == "basic" then
    wrk.headers["Authorization"] = args[2]
    wrk.body = GRANT
    request = nil -- a static request: wrk builds it once
  elseif mode == "pkjwt" then
    local index = thread_index or 0
    local total = thread_total or 1
    local file = assert(io.open(args[2], "r"))
    local line_no = 0
    for line in file:lines() do
      if line ~= "" then
        if line_no % total == index then
          bodies[#bodies + 1] = GRANT .. "&client_assertion_type=" .. ASSERTION_TYPE
            .. "&client_assertion=" .. line
        end
        line_no = line_no + 1
      end
    end
    file:close()
    assert(#bodies > 0, "no assertions in " .. args[2])
  else
    error("mode must be basic or pkjwt, got " .. tostring(mode))
  end
end

function request()
  if mode ~= "pkjwt" then
    return wrk.format()
  end
  if next_body > #bodies then
    next_body = 1
    wrapped = wrapped + 1
  end
  local body = bodies[next_body]
  next_body = next_body + 1
  return wrk.format(nil, nil, nil, body)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local totals = {}
  local wraps = 0
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses")) do
      totals[status] = (totals[status] or 0) + count
    end
    wraps = wraps + thread:get("wrapped")
  end
  local parts = {}
  for status, count in pairs(totals) do
    parts[#parts + 1] = string.format("%d=%d", status, count)
  end
  table.sort(parts)
  io.write("BENCH statuses " .. table.concat(parts, " ") .. "\n")
  io.write(string.format("BENCH wrapped %d\n", wraps))
end
