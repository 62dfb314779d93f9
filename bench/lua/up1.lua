-- The notify1.lua notification for one UnifiedPush device (the pushkey is the endpoint URL)
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"notification":{"event_id":"$3957tyerfgewrf384","room_id":"!slw48wfj34rtnrf:example.org","type":"m.room.message","sender":"@exampleuser:example.org","sender_display_name":"Major Tom","room_name":"Mission Control","prio":"high","content":{"msgtype":"m.text","body":"hello"},"counts":{"unread":2,"missed_calls":1},"devices":[{"app_id":"com.example.up","pushkey":"http://127.0.0.1:18080/up/AbCdEf0123456789","pushkey_ts":12345678,"data":{}}]}}'
