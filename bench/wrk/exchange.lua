-- wrk script: RFC 8693 token-exchange requests for bench/exchange.py.
--
--   wrk ... -s exchange.lua <token endpoint URL> -- reuse <tokens file>
--   wrk ... -s exchange.lua <token endpoint URL> -- distinct <tokens file>
--
-- Every request is an anonymous POST of
--   grant_type=urn:ietf:params:oauth:grant-type:token-exchange
--   &subject_token_type=urn:ietf:params:oauth:token-type:jwt&subject_token=<JWT>
-- reuse: the first line of the file is the subject token of every request (jti replay
-- protection is off in that trust configuration, so the same token is accepted again).
-- distinct: the file holds one pre-minted subject token per line; each is sent exactly
-- once (jti_replay is on). With several threads, thread k takes lines k, k+n, k+2n, ...
-- When a thread runs out it starts over (the replays are then rejected) and counts the
-- wrap, which the runner reports as a flagged run.
--
-- At the end, one line per total is printed for the runner to parse (the same format
-- as token.lua, so bench/issuer.py's parser reads it):
--   BENCH statuses 200=12345 400=2
--   BENCH wrapped 0

local PREFIX = "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange"
  .. "&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Ajwt"
  .. "&subject_token="

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

local function read_tokens(path, index, total)
  local file = assert(io.open(path, "r"))
  local line_no = 0
  for line in file:lines() do
    if line ~= "" then
      if line_no % total == index then
        bodies[#bodies + 1] = PREFIX .. line
      end
      line_no = line_no + 1
    end
  end
  file:close()
  assert(#bodies > 0, "no subject tokens in " .. path)
end

function init(args)
  mode = args[1]
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
  wrk.headers["Accept"] = "application/json"
  if mode == "reuse" then
    read_tokens(args[2], 0, 1)
    wrk.body = bodies[1]
    request = nil -- a static request: wrk builds it once
  elseif mode == "distinct" then
    read_tokens(args[2], thread_index or 0, thread_total or 1)
  else
    error("mode must be reuse or distinct, got " .. tostring(mode))
  end
end

function request()
  if mode ~= "distinct" then
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
