-- Argo CD health check for sluice.dev/StreamPipeline.
-- Maps the controller's status to Argo CD health (docs/gitops.md has the table):
--   not yet observed (no status, or status.observedGeneration behind) -> Progressing
--   phase Suspended (the runners are stopped)                          -> Suspended
--   Degraded=True (a runner pod that cannot run, an alert), or phase
--   Failed (a refused spec, even with spec.suspend)                    -> Degraded
--   Ready=True                                                         -> Healthy
--   Ready=False while Progressing=True (starting, rolling, rescaling,
--   a pod waiting to be scheduled)                                     -> Progressing
--   Ready=False otherwise                                              -> Degraded
-- Only the status decides (spec.suspend with a refused change is not
-- Suspended). The message is the deciding condition's message.
-- Runs under Lua 5.1 (Argo CD's) and 5.4 (tests/tests/it/docs.rs runs both).
local hs = { status = "Progressing", message = "Waiting for the Sluice controller" }

local function condition(conditions, kind)
  for _, c in ipairs(conditions or {}) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function describe(c)
  if c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return c.type .. "=" .. c.status .. " (" .. (c.reason or "no reason") .. ")"
end

local status = obj.status
if status == nil or status.observedGeneration == nil
    or status.observedGeneration < (obj.metadata.generation or 0) then
  return hs
end

local ready = condition(status.conditions, "Ready")
local progressing = condition(status.conditions, "Progressing")
local degraded = condition(status.conditions, "Degraded")

if status.phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = ready ~= nil and describe(ready) or "Suspended: runners stopped, checkpoints kept"
elseif degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(degraded)
elseif status.phase == "Failed" then
  hs.status = "Degraded"
  hs.message = ready ~= nil and describe(ready) or "Failed"
elseif ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready)
elseif ready ~= nil and ready.status == "False"
    and not (progressing ~= nil and progressing.status == "True") then
  hs.status = "Degraded"
  hs.message = describe(ready)
elseif progressing ~= nil then
  hs.message = describe(progressing)
end
return hs
