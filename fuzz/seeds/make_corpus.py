#!/usr/bin/env python3
"""Writes the seed corpora fuzz/corpus/<target>/ from the examples of
signaling-api-v1.md (made valid JSON) and the messages the tests send.
Run from the repository root: python3 fuzz/seeds/make_corpus.py"""
import hashlib, json, os, struct, sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")

def j(v):
    return json.dumps(v, separators=(",", ":")).encode()

def write(target, items):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    for it in items:
        name = hashlib.sha1(it).hexdigest()
        with open(os.path.join(d, name), "wb") as f:
            f.write(it)

SPEC_TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJodHRwczovL25leHRjbG91ZC1tYXN0ZXIubG9jYWwvIiwiaWF0IjoxNjU0ODQyMDgwLCJleHAiOjE2NTQ4NDIzODAsInN1YiI6ImFkbWluIiwidXNlcmRhdGEiOnsiZGlzcGxheW5hbWUiOiJBZG1pbmlzdHJhdG9yIn19.5rV0jh89_0fG2L-BUPtciu1q49PoYkLboj33EOdD0qQeYcvE7_di2r5WXM1WmKUCOGeX3hzn6qldDMrJBNuxvQ"
SPEC_KEY = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEIoCsNSCXyxK25zvSKRio0uiBzwub\nONq3tiGTPZo3p2Ogn6wAhhsuSxbFuUQDWMX7Tsu9fDzVdwpRHPT4y3V9cA==\n-----END PUBLIC KEY-----\n"

client = [
    {"id": "1", "type": "hello", "hello": {"version": "1.0", "features": ["audio", "video"], "auth": {"url": "https://cloud.example/ocs/v2.php/apps/spreed/api/v3/signaling/backend", "params": {"userid": "alice", "ticket": "t"}}}},
    {"id": "2", "type": "hello", "hello": {"version": "2.0", "auth": {"type": "client", "url": "https://cloud.example/", "params": {"token": SPEC_TOKEN}}}},
    {"id": "3", "type": "hello", "hello": {"version": "1.0", "auth": {"type": "internal", "params": {"random": "0123456789abcdef0123456789abcdef", "token": "00", "backend": "https://cloud.example/"}}}},
    {"id": "4", "type": "hello", "hello": {"version": "1.0", "resumeid": "the-resume-id"}},
    {"id": "5", "type": "bye", "bye": {}},
    {"id": "6", "type": "room", "room": {"roomid": "room-1", "sessionid": "nc-session"}},
    {"id": "7", "type": "room", "room": {"roomid": ""}},
    {"id": "8", "type": "message", "message": {"recipient": {"type": "session", "sessionid": "sid"}, "data": {"type": "offer", "roomType": "video", "payload": {"sdp": "v=0"}}}},
    {"id": "9", "type": "message", "message": {"recipient": {"type": "user", "userid": "bob"}, "data": {"x": 1}}},
    {"id": "10", "type": "message", "message": {"recipient": {"type": "room"}, "data": "text"}},
    {"id": "11", "type": "control", "control": {"recipient": {"type": "room"}, "data": {"type": "mute"}}},
    {"id": "12", "type": "transient", "transient": {"type": "set", "key": "k", "value": {"a": [1, 2]}, "ttl": 1000000000}},
    {"id": "13", "type": "transient", "transient": {"type": "set", "key": "k", "value": 1, "ttl": "2000"}},
    {"id": "14", "type": "transient", "transient": {"type": "remove", "key": "k"}},
    {"type": "internal", "internal": {"type": "addsession", "addsession": {"sessionid": "v1", "roomid": "room-1", "userid": "phone", "user": {"displayname": "Phone"}, "flags": 2, "incall": 1}}},
    {"type": "internal", "internal": {"type": "addsession", "addsession": {"sessionid": "v2", "roomid": "room-1", "options": {"actorId": "a", "actorType": "phones"}}}},
    {"type": "internal", "internal": {"type": "updatesession", "updatesession": {"sessionid": "v1", "roomid": "room-1", "flags": 3, "incall": 7}}},
    {"type": "internal", "internal": {"type": "removesession", "removesession": {"sessionid": "v1", "roomid": "room-1", "userid": "phone"}}},
    {"type": "internal", "internal": {"type": "incall", "incall": {"incall": 1}}},
    {"type": "internal", "internal": {"type": "dialout", "dialout": {"type": "status", "roomid": "room-1", "status": {"callid": "c1", "status": "ringing"}}}},
    {"type": "internal", "internal": {"type": "dialout", "dialout": {"type": "error", "roomid": "room-1", "error": {"code": "x", "message": "y"}}}},
]
client_bytes = [j(m) for m in client] + [b"not json", b'{"id":"x"}', b'{"type":1}']
write("client_message", client_bytes)

# hub_messages: a conversation of an internal client, one message a line.
conv = [
    client[14], client[15], client[16],
    {"type": "message", "message": {"recipient": {"type": "room"}, "data": {"type": "offer"}}},
    {"type": "message", "message": {"recipient": {"type": "session", "sessionid": "v1"}, "data": {}}},
    client[18], client[17], client[19], client[11], client[3],
]
write("hub_messages", [b"\n".join(j(m) for m in conv)] + [j(m) for m in client])

backend = [
    {"type": "invite", "invite": {"userids": ["alice"], "alluserids": ["alice", "bob"], "properties": {"name": "Room", "type": 2}}},
    {"type": "disinvite", "disinvite": {"userids": ["bob"], "alluserids": ["alice"], "sessionids": ["nc1"]}},
    {"type": "update", "update": {"userids": ["alice"], "properties": {"name": "New"}}},
    {"type": "delete", "delete": {"userids": ["alice"]}},
    {"type": "participants", "participants": {"changed": [{"sessionId": "nc1", "permissions": ["publish-media"], "participantType": 3}], "users": [{"sessionId": "nc1", "inCall": 7}]}},
    {"type": "incall", "incall": {"incall": 7, "changed": [{"sessionId": "nc1", "inCall": 7}], "users": []}},
    {"type": "incall", "incall": {"incall": 0, "all": True}},
    {"type": "message", "message": {"data": {"chat": {"refresh": True}}}},
    {"type": "switchto", "switchto": {"roomid": "room-2", "sessions": ["nc1", "nc2"]}},
    {"type": "switchto", "switchto": {"roomid": "room-2", "sessions": {"nc1": {"foo": "bar"}, "nc2": None}}},
    {"type": "dialout", "dialout": {"number": "+4912345678", "options": {"actorId": "x"}}},
]
write("backend_body", [j(b) for b in backend])

# backend_api: arbitrary-encoded; seed with raw bodies (the fuzzer finds the structure).
write("backend_api", [j(b) for b in backend])

ocs = lambda d, code=200: {"ocs": {"meta": {"status": "ok" if code == 200 else "failure", "statuscode": code, "message": "OK"}, "data": d}}
nc = [
    {"type": "auth", "auth": {"version": "1.0", "userid": "alice", "user": {"displayname": "Alice"}}},
    ocs({"type": "auth", "auth": {"version": "1.0"}}),
    ocs({"type": "room", "room": {"version": "1.0", "roomid": "room-1", "properties": {"name": "R", "type": 3}, "permissions": ["publish-media", "control"]}}),
    ocs({"type": "error", "error": {"code": "no_such_room", "message": "The room does not exist", "details": {"x": 1}}}),
    ocs({}, 429),
    ocs({"type": "ping", "ping": {"version": "1.0"}}),
    ocs({"capabilities": {"spreed": {"features": ["audio", "video", "chat-v2"], "config": {"signaling": {"hello-v2-token-key": SPEC_KEY, "session-ping-limit": 200}}}}}),
    {"capabilities": {"spreed": {"features": "x", "config": {"signaling": {"session-ping-limit": -1}}}}},
]
write("nextcloud_response", [j(n) for n in nc])

write("backend_url", [u.encode() for u in [
    "https://cloud.example/nc/ocs/v2.php/apps/spreed/api/v3/signaling/backend",
    "https://cloud.example/nc/index.php/ocs/v1.php/apps/spreed/api/v1/signaling/backend/",
    "https://user:pw@cloud.example/nc/remote.php/dav/files/me/ocs/v2.php/cloud/capabilities?x=1#f",
    "https://CLOUD.example:443/nc/../nc2/ocs/v2.php/apps/spreed/api/v99/signaling/backend",
    "http://127.0.0.1:9/ocs/v2.php/apps/spreed/api/v4/signaling/backend",
    "http://127.0.0.1:09/%2e%2e/x",
    "https://evil.example/",
]])

# arbitrary-encoded targets: seed with plausible byte strings.
def arb_str(s):
    # arbitrary's String takes a length prefix only at the end of input; a
    # plain UTF-8 prefix is still a useful seed.
    return s.encode()
write("jwt_verify", [arb_str(SPEC_TOKEN + SPEC_KEY), SPEC_TOKEN.encode(), SPEC_KEY.encode()])
write("jwt_claims", [bytes([0]) + struct.pack("<I", 1654842100) + j({"iss": "https://nextcloud-master.local/", "iat": 1654842080, "exp": 1654842380, "sub": "admin", "userdata": {"displayname": "Administrator"}}),
                     bytes([2]) + struct.pack("<I", 1654842100) + j({"iat": 1654842080, "exp": 9223372036854775807})])
write("checksum", [b"MySecretValue" + b"afb6b872ab03e3376b31bf0af601067222ff7990335ca02d327071b73c0119c6" + j({"type": "auth"})])

conf = []
for name in ["server.conf.sample"]:
    p = os.path.join(ROOT, name)
    if os.path.exists(p):
        conf.append(open(p, "rb").read())
conf.append(b"""top = level
rem this is a comment
REM also a comment
; comment
# comment
[Backend]
  Secret = abc#def
inline = value # comment
inline2 = value\t; comment
colon: yes
multi = first
  second
dup = one
dup = two
ref = %(dup)s-x
fromdefault = %(top)s
[other]
remote = kept
""")
conf.append(b"""[http]
listen = 127.0.0.1:9090
[sessions]
hashkey = 0123456789abcdef0123456789abcdef
blockkey = 0123456789abcdef
[clients]
internalsecret = internal
[backend]
backends = one, two
timeout = 5
[one]
url = https://cloud.one.example/
secret = s1
sessionlimit = 3
[two]
urls = https://a.example, https://b.example/nc
secret = $(SECRET_TWO)
[nats]
url = nats://loopback
[mcu]
type = janus
""")
write("goconf", conf)
# Frames a remote signaling server (B) sends a federated link, after a byte
# that picks the link's names (0: distinct, 1: before B's hello answer,
# 2: all equal) and, with bit 4, a join waiting for its answer.
remote = [
    {"type": "welcome", "welcome": {"version": "2.0", "features": ["federation"]}},
    {"id": "h", "type": "hello", "hello": {"sessionid": "R", "resumeid": "res", "userid": "bob"}},
    {"type": "room", "room": {"roomid": "rroom", "properties": {"name": "x"}}},
    {"type": "error", "error": {"code": "no_such_room", "message": "m", "details": {"room": {"roomid": "rroom"}}}},
    {"type": "message", "message": {"sender": {"type": "session", "sessionid": "S2", "userid": "u"}, "recipient": {"type": "session", "sessionid": "R"}, "data": {"type": "offer", "from": "S2", "to": "R", "roomType": "video", "sid": "1", "payload": {"sdp": "v=0"}, "extra": {"x": 1}}}},
    {"type": "message", "message": {"sender": {"type": "session", "sessionid": "R"}, "data": {"type": "answer", "from": "R", "to": "S2", "payload": {"sdp": "v=0"}}}},
    {"type": "control", "control": {"sender": {"type": "session", "sessionid": "S2"}, "recipient": {"type": "session", "sessionid": "R"}, "data": {"action": "forceMute", "peerId": "R"}}},
    {"type": "transient", "transient": {"type": "set", "key": "sd:R", "value": {"x": 1}}},
    {"type": "event", "event": {"target": "room", "type": "join", "join": [{"sessionid": "R", "userid": "bob", "user": {"displayname": "Bob"}}, {"sessionid": "S2"}]}},
    {"type": "event", "event": {"target": "room", "type": "leave", "leave": ["R", "S2"]}},
    {"type": "event", "event": {"target": "room", "type": "message", "message": {"roomid": "rroom", "data": {"type": "chat", "chat": {"refresh": True, "comment": {"actorType": "users", "actorId": "carol", "token": "rroom", "lastEditActorType": "federated_users", "lastEditActorId": "alice@a.example", "messageParameters": {"mention-user1": {"type": "user", "id": "dave", "server": "https://a.example"}, "mention-user2": {"type": "user", "id": "eve"}, "mention-call": {"type": "call", "id": "rroom"}}, "parent": {"actorType": "users", "actorId": "carol", "token": "rroom"}}}}}}},
    {"type": "event", "event": {"target": "participants", "type": "update", "update": {"roomid": "rroom", "changed": [{"sessionId": "R", "actorType": "federated_users", "actorId": "alice@a.example", "inCall": 7}], "users": [{"sessionid": "S2", "actorType": "users", "actorId": "carol"}]}}},
    {"type": "event", "event": {"target": "participants", "type": "flags", "flags": {"roomid": "rroom", "sessionid": "R", "flags": 1}}},
    {"type": "event", "event": {"target": "roomlist", "type": "disinvite", "disinvite": {"roomid": "rroom"}}},
    {"type": "bye", "bye": {"reason": "x"}},
]
write("federation_rewrite", [bytes([b]) + j(m) for m in remote for b in (0, 4, 1, 2)])

print("corpora written to", CORPUS)
