-- Runs one Argo CD health script on one fixture, the way Argo CD does: the script is a chunk that
-- reads the global `obj` and returns a table. It runs in an environment with only what Argo CD's
-- gopher-lua offers by default (no os, io, require or load*), so a script that used more would fail
-- here as it would in Argo CD.
--   lua5.1 argocd-health-harness.lua SCRIPT.lua FIXTURE.json
-- FIXTURE.json: {"expect": {"status": ..., "message": ...}, "object": {...}}.
-- Prints "ok <status>: <message>" and exits 0, or prints what differs and exits 1.
local json = require("dkjson")

local script_path, fixture_path = arg[1], arg[2]
if not script_path or not fixture_path then
  io.stderr:write("usage: lua5.1 argocd-health-harness.lua SCRIPT.lua FIXTURE.json\n")
  os.exit(2)
end

local function read(path)
  local f = assert(io.open(path, "r"))
  local text = f:read("*a")
  f:close()
  return text
end

local fixture, _, err = json.decode(read(fixture_path))
if not fixture then
  print("bad fixture " .. fixture_path .. ": " .. tostring(err))
  os.exit(1)
end

local chunk, load_err = loadstring(read(script_path), "=" .. script_path)
if not chunk then
  print("script does not compile: " .. load_err)
  os.exit(1)
end

local env = {
  obj = fixture.object,
  assert = assert, error = error, ipairs = ipairs, next = next, pairs = pairs, pcall = pcall,
  select = select, tonumber = tonumber, tostring = tostring, type = type, unpack = unpack,
  string = string, table = table, math = math,
}
local provided = {}
for name in pairs(env) do provided[name] = true end
setfenv(chunk, env)
local ok, hs = pcall(chunk)
if not ok then
  print("script failed: " .. tostring(hs))
  os.exit(1)
end
if type(hs) ~= "table" then
  print("script returned " .. type(hs) .. ", not a table")
  os.exit(1)
end

local valid = { Healthy = true, Progressing = true, Degraded = true, Suspended = true, Missing = true, Unknown = true }
local problems = {}
if not valid[hs.status] then
  table.insert(problems, "status " .. tostring(hs.status) .. " is not an Argo CD health status")
end
if type(hs.message) ~= "string" or hs.message == "" then
  table.insert(problems, "no message")
end
if hs.status ~= fixture.expect.status then
  table.insert(problems, string.format("status: got %q, want %q", tostring(hs.status), fixture.expect.status))
end
if hs.message ~= fixture.expect.message then
  table.insert(problems, string.format("message: got %q, want %q", tostring(hs.message), fixture.expect.message))
end
for name in pairs(env) do
  if not provided[name] then
    table.insert(problems, "script set the global " .. name .. " (declare it local)")
  end
end

if #problems > 0 then
  print(table.concat(problems, "; "))
  os.exit(1)
end
print(string.format("ok %s: %s", hs.status, hs.message))
