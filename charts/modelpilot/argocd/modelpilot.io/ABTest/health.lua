-- Argo CD health check for modelpilot.io/ABTest.
-- Reads the status the modelpilot operator writes: the Ready condition (reasons Routing,
-- VariantsNotReady, ModelVersionMissing, RoutingFailed, SpecError) with observedGeneration, the
-- kstatus Stalled condition, status.split, status.winner and the RoutingLimited condition.
-- Written for Argo CD's Lua (gopher-lua, Lua 5.1); tested with lua5.4 (tests/unit/test_argocd_health.py).
local hs = {}

local function condition(status, kind)
  if status.conditions ~= nil then
    for _, c in ipairs(status.conditions) do
      if c.type == kind then
        return c
      end
    end
  end
  return nil
end

local function text(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  if c ~= nil and c.reason ~= nil and c.reason ~= "" then
    return c.reason
  end
  return fallback
end

local status = obj.status
if status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the modelpilot operator to reconcile"
  return hs
end

local generation = (obj.metadata or {}).generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. string.format("%d", generation)
  return hs
end

local ready = condition(status, "Ready")
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  if status.split ~= nil and status.split ~= "" then
    hs.message = "Split " .. status.split
  else
    hs.message = text(ready, "Routing")
  end
  if status.winner ~= nil and status.winner ~= "" then
    hs.message = hs.message .. "; winner: " .. status.winner
    if status.phase == "Promoted" then
      hs.message = hs.message .. " (promoted)"
    end
  end
  local limited = condition(status, "RoutingLimited")
  if limited ~= nil and limited.status == "True" then
    hs.message = hs.message .. " (limited: " .. text(limited, "Unsupported") .. ")"
  end
  return hs
end

-- Stalled=True: someone has to act (a spec that does not parse, routing the API refuses).
local stalled = condition(status, "Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = text(stalled, text(ready, "Stalled"))
  return hs
end

if ready ~= nil and (ready.reason == "ModelVersionMissing" or ready.reason == "RoutingFailed") then
  hs.status = "Degraded"
  hs.message = text(ready, ready.reason)
  return hs
end

hs.status = "Progressing"
hs.message = text(ready, "Waiting for the ABTest's variants to become Ready")
return hs
