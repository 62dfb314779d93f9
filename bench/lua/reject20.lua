-- FCM legacy, one device per notification, 1 in 5 pushkeys unregistered ("reject-...":
-- the fake FCM answers NotRegistered, the gateway answers {"rejected":[pushkey]})
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
bodies = {}
bodies[1] = '{"notification":{"event_id":"$3957tyerfgewrf384","room_id":"!slw48wfj34rtnrf:example.org","type":"m.room.message","sender":"@exampleuser:example.org","sender_display_name":"Major Tom","room_name":"Mission Control","prio":"high","content":{"msgtype":"m.text","body":"hello"},"counts":{"unread":2,"missed_calls":1},"devices":[{"app_id":"com.example.gcm.rej","pushkey":"spqr1","pushkey_ts":12345678,"data":{}}]}}'
bodies[2] = '{"notification":{"event_id":"$3957tyerfgewrf384","room_id":"!slw48wfj34rtnrf:example.org","type":"m.room.message","sender":"@exampleuser:example.org","sender_display_name":"Major Tom","room_name":"Mission Control","prio":"high","content":{"msgtype":"m.text","body":"hello"},"counts":{"unread":2,"missed_calls":1},"devices":[{"app_id":"com.example.gcm.rej","pushkey":"spqr2","pushkey_ts":12345678,"data":{}}]}}'
bodies[3] = '{"notification":{"event_id":"$3957tyerfgewrf384","room_id":"!slw48wfj34rtnrf:example.org","type":"m.room.message","sender":"@exampleuser:example.org","sender_display_name":"Major Tom","room_name":"Mission Control","prio":"high","content":{"msgtype":"m.text","body":"hello"},"counts":{"unread":2,"missed_calls":1},"devices":[{"app_id":"com.example.gcm.rej","pushkey":"spqr3","pushkey_ts":12345678,"data":{}}]}}'
bodies[4] = '{"notification":{"event_id":"$3957tyerfgewrf384","room_id":"!slw48wfj34rtnrf:example.org","type":"m.room.message","sender":"@exampleuser:example.org","sender_display_name":"Major Tom","room_name":"Mission Control","prio":"high","content":{"msgtype":"m.text","body":"hello"},"counts":{"unread":2,"missed_calls":1},"devices":[{"app_id":"com.example.gcm.rej","pushkey":"spqr4","pushkey_ts":12345678,"data":{}}]}}'
bodies[5] = '{"notification":{"event_id":"$3957tyerfgewrf384","room_id":"!slw48wfj34rtnrf:example.org","type":"m.room.message","sender":"@exampleuser:example.org","sender_display_name":"Major Tom","room_name":"Mission Control","prio":"high","content":{"msgtype":"m.text","body":"hello"},"counts":{"unread":2,"missed_calls":1},"devices":[{"app_id":"com.example.gcm.rej","pushkey":"reject-5","pushkey_ts":12345678,"data":{}}]}}'
local n = 0
request = function()
  n = n % 5 + 1
  return wrk.format(nil, nil, nil, bodies[n])
end
