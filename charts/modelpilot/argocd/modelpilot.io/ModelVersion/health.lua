-- Argo CD health check for modelpilot.io/ModelVersion.
-- Reads the status the modelpilot operator writes: kstatus conditions (Ready, Reconciling, Stalled,
-- plus Resolved) carrying observedGeneration, status.phase, and status.rollout for guarded canaries.
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

local function is_true(c)
  return c ~= nil and c.status == "True"
end

local function num(v)
  if type(v) == "number" and v == math.floor(v) then
    return string.format("%d", v)
  end
  return tostring(v)
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

local function rollout_position(ro)
  local parts = {}
  if ro.weight ~= nil then
    local w = num(ro.weight) .. "%"
    if ro.effectiveWeight ~= nil and ro.effectiveWeight ~= ro.weight then
      w = w .. " (effective " .. num(ro.effectiveWeight) .. "%)"
    end
    table.insert(parts, "at " .. w)
  end
  if ro.step ~= nil then
    local s = "step " .. num(ro.step + 1)
    if obj.spec ~= nil and obj.spec.rollout ~= nil and obj.spec.rollout.steps ~= nil then
      s = s .. " of " .. num(#obj.spec.rollout.steps)
    end
    table.insert(parts, s)
  end
  return table.concat(parts, ", ")
end

local function canary_name(ro)
  if ro.canaryVersion ~= nil then
    local s = "canary version " .. tostring(ro.canaryVersion)
    if ro.stableVersion ~= nil then
      s = s .. " against stable " .. tostring(ro.stableVersion)
    end
    return s
  end
  return "canary"
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
  hs.message = "Waiting for the operator to observe generation " .. num(generation)
  if status.observedGeneration ~= nil then
    hs.message = hs.message .. " (status describes generation " .. num(status.observedGeneration) .. ")"
  end
  return hs
end

local ready = condition(status, "Ready")
local reconciling = condition(status, "Reconciling")
local stalled = condition(status, "Stalled")
local resolved = condition(status, "Resolved")
local ro = status.rollout or {}
local phase = status.phase or ""

-- A paused canary waits for a person: `modelpilot promote|abort|resume NAME`.
if ro.phase == "Paused" then
  hs.status = "Suspended"
  hs.message = "Canary rollout paused: " .. canary_name(ro)
  local pos = rollout_position(ro)
  if pos ~= "" then
    hs.message = hs.message .. " " .. pos
  end
  hs.message = hs.message .. "; promote, abort or resume it"
  return hs
end

-- The canary failed its analysis (or was aborted): the stable version still serves, the rejected one
-- is not tried again until spec.model or the alias points elsewhere. Degraded, see docs/gitops.md.
if phase == "RolledBack" then
  hs.status = "Degraded"
  local serving = (status.model or {}).version
  hs.message = "Rolled back version " .. tostring(ro.rejectedVersion or ro.canaryVersion or "?")
  if serving ~= nil then
    hs.message = hs.message .. " (version " .. tostring(serving) .. " keeps serving)"
  end
  if ro.reason ~= nil and ro.reason ~= "" then
    hs.message = hs.message .. ": " .. ro.reason
  end
  return hs
end

if is_true(stalled) then
  hs.status = "Degraded"
  hs.message = text(stalled, "Stalled")
  return hs
end

if phase == "Failed" or phase == "Degraded" then
  hs.status = "Degraded"
  if resolved ~= nil and resolved.status == "False" then
    hs.message = text(resolved, phase)
  else
    hs.message = text(ready, phase)
  end
  return hs
end

if phase == "Progressing" or ro.phase == "Progressing" then
  hs.status = "Progressing"
  hs.message = "Canary rollout: " .. canary_name(ro)
  local pos = rollout_position(ro)
  if pos ~= "" then
    hs.message = hs.message .. " " .. pos
  end
  return hs
end

if is_true(reconciling) then
  hs.status = "Progressing"
  hs.message = text(reconciling, "Reconciling")
  return hs
end

if is_true(ready) and phase == "Ready" then
  hs.status = "Healthy"
  hs.message = text(ready, "Ready")
  local model = status.model
  if model ~= nil and model.name ~= nil and model.version ~= nil then
    hs.message = "Serving " .. tostring(model.name) .. " version " .. tostring(model.version) .. ": " .. hs.message
  end
  if resolved ~= nil and resolved.status == "False" then
    hs.message = hs.message .. " (registry: " .. text(resolved, "unresolved") .. ")"
  end
  return hs
end

hs.status = "Progressing"
hs.message = text(ready, "Waiting for the ModelVersion to become Ready")
return hs
