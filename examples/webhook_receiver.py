"""Receive Sous webhooks: check the Sous-Signature header, then print each finished job.

Usage: SOUS_WEBHOOK_SECRET=whsec_... python3 examples/webhook_receiver.py [--port 9000]
"""

import argparse
import hashlib
import hmac
import json
import os
import time
from http.server import BaseHTTPRequestHandler, HTTPServer


def verified(body: bytes, header: str, tolerance: int = 300) -> bool:
    """Sous-Signature is t=<unix time>,v1=<HMAC-SHA256 of "<t>." + body, in hex>."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    timestamp = fields.get("t", "")
    if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > tolerance:
        return False  # missing, or too old: a replay
    secret = os.environ["SOUS_WEBHOOK_SECRET"].encode()  # sous tenants webhook-secret show
    expected = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields.get("v1", ""))


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if not verified(body, self.headers.get("Sous-Signature", "")):
            self.send_response(400)  # Sous retries, then records the delivery as failed
            self.end_headers()
            return
        job = json.loads(body)
        print(f"job {job['id']} {job['kind']} {job['state']}", flush=True)
        self.send_response(204)
        self.end_headers()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9000, help="port (default: %(default)s)")
    port = parser.parse_args().port
    print(f"listening on http://127.0.0.1:{port}/", flush=True)
    HTTPServer(("127.0.0.1", port), Receiver).serve_forever()
