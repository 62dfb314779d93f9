-- The notify1.lua notification for one APNs device (app com.example.apns; the base64 pushkey is
-- sent to the fake APNs as the hex token 00ff11...)
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"notification":{"event_id":"$3957tyerfgewrf384","room_id":"!slw48wfj34rtnrf:example.org","type":"m.room.message","sender":"@exampleuser:example.org","sender_display_name":"Major Tom","room_name":"Mission Control","prio":"high","content":{"msgtype":"m.text","body":"hello"},"counts":{"unread":2,"missed_calls":1},"devices":[{"app_id":"com.example.apns","pushkey":"AP8RERERERERERERERERERERERERERERERERERERERE=","pushkey_ts":12345678,"data":{}}]}}'
