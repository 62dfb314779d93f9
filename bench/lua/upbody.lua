-- Ceiling for UnifiedPush: what the gateway POSTs to an endpoint ({"notification": ...} without devices)
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"notification":{"event_id":"$3957tyerfgewrf384","room_id":"!slw48wfj34rtnrf:example.org","type":"m.room.message","sender":"@exampleuser:example.org","sender_display_name":"Major Tom","room_name":"Mission Control","prio":"high","content":{"msgtype":"m.text","body":"hello"},"counts":{"unread":2,"missed_calls":1}}}'
