"""A webhook receiver that checks autokey's signatures with the official Standard Webhooks
library. Usage: receiver.py <whsec_secret> <port>. It listens on 127.0.0.1:<port>, prints
"ready", then answers 204 to a correctly signed POST and 401 otherwise, printing one JSON
line per request: {"verified": bool, "id": webhook-id, "type": ...}.
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

SECRET, PORT = sys.argv[1], int(sys.argv[2])
VERIFIER = Webhook(SECRET)


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            event = VERIFIER.verify(body, headers)
            verified = True
        except WebhookVerificationError:
            event, verified = {}, False
        self.send_response(204 if verified else 401)
        self.end_headers()
        line = {"verified": verified, "id": headers.get("webhook-id"), "type": event.get("type")}
        print(json.dumps(line), flush=True)

    def log_message(self, *args):
        pass


server = HTTPServer(("127.0.0.1", PORT), Handler)
print("ready", flush=True)
server.serve_forever()
