-- Argo CD health check for artifacts.dev/Stack (v1alpha1).
-- Install as resource.customizations.health.artifacts.dev_Stack in argocd-cm (see
-- argocd-cm-patch.yaml beside this file). Argo CD runs it with the live object in the global `obj`
-- (gopher-lua, Lua 5.1, without the os and io libraries) and reads the returned table.
--   no status, or status.observedGeneration < metadata.generation -> Progressing
--   Ready=True                                                   -> Healthy
--   Ready=False, reason in TRANSIENT                             -> Progressing
--   Ready=False, any other reason (someone must act)             -> Degraded, the condition's message
--   Ready=Unknown, or no Ready condition yet                     -> Progressing
-- A Stack waits for its ArtifactStore: ArtifactStoreNotReady is Progressing, not Degraded (the
-- store's own health says whether someone must act).
-- Tested by tests/chart/test-argocd-health.sh.

-- Reasons of Ready=False that resolve without anyone acting.
local TRANSIENT = {
  Reconciling = true,
  Verifying = true,
  ArtifactStoreNotReady = true,
}

local hs = {}

local function nonempty(s, fallback)
  if type(s) == "string" and s ~= "" then
    return s
  end
  return fallback
end

local status = obj.status
local generation = obj.metadata and obj.metadata.generation
if type(status) ~= "table" or type(status.observedGeneration) ~= "number"
    or (type(generation) == "number" and status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "waiting for the operator"
  return hs
end

local ready = nil
if type(status.conditions) == "table" then
  for _, condition in ipairs(status.conditions) do
    if type(condition) == "table" and condition.type == "Ready" then
      ready = condition
      break
    end
  end
end

if ready == nil then
  hs.status = "Progressing"
  hs.message = "waiting for the operator"
elseif ready.status == "True" then
  hs.status = "Healthy"
  hs.message = nonempty(ready.message, "Ready")
elseif ready.status == "False" and not TRANSIENT[ready.reason] then
  hs.status = "Degraded"
  hs.message = nonempty(ready.message, nonempty(ready.reason, "not ready"))
else
  hs.status = "Progressing"
  hs.message = nonempty(ready.message, nonempty(ready.reason, "waiting for the operator"))
end
return hs
