-- The soak's traffic: every request a different notification, drawn from a fixed-seed mix.
--   format: 70% full, 20% event_id_only pushers, 10% Synapse badge-only updates (no event_id)
--   devices: 1 (60%), 2 (15%), 3 (10%), 4 (10%), 5 (5%), each on one of four apps:
--     FCM legacy 35%, FCM v1 15%, APNs 30%, UnifiedPush 20%
--   rejected pushkeys: about 5% (legacy single-device "reject-...", APNs tokens 0xbad0..., UnifiedPush
--   endpoints under /soak/up/gone/); the fake upstreams also answer 5% of requests 503 (retried).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
math.randomseed(20251130)

local n = 0
local words = { "hello", "are you there?", "see you at 5", "the build is green", "lunch?",
  "I pushed a fix for the flaky test, can you review it when you have a minute", "ok", "👍",
  "Ünïcödé and \\\"quotes\\\" and \\\\ backslashes" }
local apps = { "com.example.gcm", "com.example.gcm.v1", "com.example.apns", "com.example.up" }

local function pick_app()
  local r = math.random(100)
  if r <= 35 then return 1 elseif r <= 50 then return 2 elseif r <= 80 then return 3 else return 4 end
end

local function hex(k, len)
  local t = {}
  for i = 1, len do t[i] = string.format("%02x", (k * 131 + i * 17) % 256) end
  return table.concat(t)
end

-- base64 of 32 bytes whose first two are 0x00ff (delivered) or 0xbad0 (unregistered)
local b64chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local function base64(bytes)
  local out = {}
  for i = 1, #bytes, 3 do
    local a, b, c = bytes:byte(i, i + 2)
    local v = a * 65536 + (b or 0) * 256 + (c or 0)
    for j = 3, 0, -1 do
      local idx = math.floor(v / 64 ^ j) % 64
      out[#out + 1] = b64chars:sub(idx + 1, idx + 1)
    end
  end
  local pad = (3 - #bytes % 3) % 3
  local s = table.concat(out)
  return s:sub(1, #s - pad) .. string.rep("=", pad)
end
local function apns_token(k, bad)
  local bytes = { bad and 0xba or 0x00, bad and 0xd0 or 0xff }
  for i = 3, 32 do bytes[i] = (k * 7 + i * 13) % 256 end
  return base64(string.char((table.unpack or unpack)(bytes)))
end

local function device(app, k, single, format)
  local reject = math.random(100) <= 5
  local key
  if app == 1 then
    key = (reject and single) and ("reject-" .. k) or ("fcm-" .. hex(k, 20))
  elseif app == 2 then
    key = "fcmv1-" .. hex(k, 20)
  elseif app == 3 then
    key = apns_token(k, reject)
  else
    key = reject and ("http://127.0.0.1:18080/soak/up/gone/" .. hex(k, 8))
                  or ("http://127.0.0.1:18080/soak/up/" .. hex(k, 8))
  end
  local data = (format == "event_id_only") and '{"format":"event_id_only"}' or '{}'
  return string.format('{"app_id":"%s","pushkey":"%s","pushkey_ts":%d,"data":%s,"tweaks":{"highlight":false,"sound":"default"}}',
    apps[app], key, 1700000000 + k, data)
end

request = function()
  n = n + 1
  local r = math.random(100)
  local format = (r <= 70) and "full" or ((r <= 90) and "event_id_only" or "badge")
  local d = math.random(100)
  local count = (d <= 60) and 1 or ((d <= 75) and 2 or ((d <= 85) and 3 or ((d <= 95) and 4 or 5)))
  local devices = {}
  for i = 1, count do devices[i] = device(pick_app(), math.random(5000), count == 1, format) end
  local devs = table.concat(devices, ",")
  local room = "!room" .. math.random(200) .. ":example.org"
  local body
  if format == "badge" then
    body = string.format('{"notification":{"id":"","type":null,"sender":"","counts":{"unread":0},"prio":"high","devices":[%s]}}', devs)
  elseif format == "event_id_only" then
    body = string.format('{"notification":{"event_id":"$ev%d","room_id":"%s","prio":"high","counts":{"unread":%d},"devices":[%s]}}',
      n, room, math.random(0, 50), devs)
  else
    body = string.format('{"notification":{"event_id":"$ev%d","id":"$ev%d","room_id":"%s","type":"m.room.message","sender":"@user%d:example.org","sender_display_name":"User %d","room_name":"Room %d","prio":"%s","content":{"msgtype":"m.text","body":"%s"},"counts":{"unread":%d,"missed_calls":%d},"devices":[%s]}}',
      n, n, room, math.random(100), math.random(100), math.random(200), (math.random(10) == 1) and "low" or "high",
      words[math.random(#words)], math.random(0, 50), math.random(0, 2), devs)
  end
  return wrk.format(nil, nil, nil, body)
end

-- Count the answers that reject a pushkey (read by soak.sh's done() through the thread table).
rejected_answers = 0
response = function(status, headers, body)
  if status == 200 and body:find('"rejected":["', 1, true) then
    rejected_answers = rejected_answers + 1
  end
end
