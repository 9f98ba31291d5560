-- wrk script for bench/run.py: replays PRE-SIGNED POST /v1/orders requests, each at most once.
--
--   wrk -t T -c C -d S -s bench/loadgen.lua http://HOST:PORT -- POOL_FILE T
--
-- POOL_FILE has one request per line: app <TAB> timestamp <TAB> nonce <TAB> signature <TAB> body.
-- Thread k (0-based) takes lines k, k+T, k+2T, ... so no two threads share a nonce. When a thread
-- runs out it sends GET /healthz instead (unless the 3rd arg is "cycle": then it starts over) (counted as `exhausted`, never as an order) and stops:
-- bench/run.py then marks the run invalid. done() prints one line "PAYCELL_BENCH {json}".

local threads = {}
local counter = 0

function setup(thread)
   thread:set("id", counter)
   counter = counter + 1
   table.insert(threads, thread)
end

function init(args)
   local path, nthreads = args[1], tonumber(args[2] or "1")
   cycle = args[3] == "cycle"   -- bench.suite's bare target: replay the pool round and round
   local f = assert(io.open(path, "r"))
   local text = f:read("*a")
   f:close()
   pool, next_i, lineno = {}, 1, 0
   for line in text:gmatch("[^\n]+") do
      if lineno % nthreads == id then
         local app, ts, nonce, sig, body = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
         pool[#pool + 1] = wrk.format("POST", "/v1/orders", {
            ["Content-Type"] = "application/json",
            ["X-Paycell-App"] = app,
            ["X-Paycell-Timestamp"] = ts,
            ["X-Paycell-Nonce"] = nonce,
            ["X-Paycell-Signature"] = sig,
         }, body)
      end
      lineno = lineno + 1
   end
   filler = wrk.format("GET", "/healthz", {}, nil)
   n_200, n_202, n_other_2xx, n_non_2xx = 0, 0, 0, 0
   n_succeeded, n_pending, n_other_status, exhausted = 0, 0, 0, 0
end

function request()
   local r = pool[next_i]
   if cycle then
      next_i = next_i % #pool + 1
      return r
   end
   if r == nil then
      exhausted = exhausted + 1
      wrk.thread:stop()
      return filler
   end
   pool[next_i] = nil   -- never sent twice
   next_i = next_i + 1
   return r
end

function response(status, headers, body)
   if status == 200 then n_200 = n_200 + 1
   elseif status == 202 then n_202 = n_202 + 1
   elseif status >= 200 and status < 300 then n_other_2xx = n_other_2xx + 1
   else n_non_2xx = n_non_2xx + 1 end
   if status == 200 or status == 202 then
      if body:find('"status":"SUCCEEDED"', 1, true) then n_succeeded = n_succeeded + 1
      elseif body:find('"status":"PENDING"', 1, true) then n_pending = n_pending + 1
      else n_other_status = n_other_status + 1 end
   end
end

local function sum(name)
   local total = 0
   for _, t in ipairs(threads) do total = total + (t:get(name) or 0) end
   return total
end

function done(summary, latency, requests)
   local e = summary.errors
   local parts = {
      string.format('"requests":%d', summary.requests),
      string.format('"duration_us":%d', summary.duration),
      string.format('"bytes":%d', summary.bytes),
      string.format('"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}',
                    e.connect, e.read, e.write, e.status, e.timeout),
      string.format('"latency_us":{"p50":%d,"p97":%d,"p99":%d,"p99.9":%d,"max":%d,"mean":%.1f}',
                    latency:percentile(50), latency:percentile(97), latency:percentile(99),
                    latency:percentile(99.9), latency.max, latency.mean),
   }
   for _, name in ipairs({"n_200", "n_202", "n_other_2xx", "n_non_2xx", "n_succeeded",
                          "n_pending", "n_other_status", "exhausted"}) do
      parts[#parts + 1] = string.format('"%s":%d', name, sum(name))
   end
   io.write("PAYCELL_BENCH {" .. table.concat(parts, ",") .. "}\n")
end
