"""fnrt's Python 3.11 runtime: serves 0.0.0.0:9000 and calls handle(event, context) of the
user's handler module (SCF_HANDLER, "module.function" or "dir/module.function", default
"handler.handle") under
USER_CODE_ROOT (/var/user/), the way Scaleway's Python runtime does:

- event: {"path", "httpMethod", "headers", "queryStringParameters", "body",
  "isBase64Encoded"}; context: {"memoryLimitInMb", "functionName", "functionVersion",
  "requestId"}.
- a returned dict with "statusCode" is the answer (its "headers" and "body"; a body that
  is not a string is sent as JSON); anything else is sent as a JSON body with 200.
- an exception is printed (it reaches the function's logs) and answered with 500.
"""

import base64
import http.server
import importlib
import json
import os
import sys
import traceback
import urllib.parse

ROOT = os.environ.get("USER_CODE_ROOT", "/var/user/")
HANDLER = os.environ.get("SCF_HANDLER", "handler.handle")

sys.path.insert(0, ROOT)
module_name, _, function_name = HANDLER.rpartition(".")
# "src/handler.handle" names src/handler.py, as "src.handler.handle" does.
handle = getattr(importlib.import_module(module_name.replace("/", ".") or "handler"), function_name)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, headers, body):
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, str(v))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def call(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        url = urllib.parse.urlsplit(self.path)
        try:
            body, b64 = raw.decode("utf-8"), False
        except UnicodeDecodeError:
            body, b64 = base64.b64encode(raw).decode(), True
        event = {
            "path": url.path,
            "httpMethod": self.command,
            "headers": dict(self.headers.items()),
            "queryStringParameters": dict(urllib.parse.parse_qsl(url.query)),
            "body": body,
            "isBase64Encoded": b64,
        }
        context = {
            "memoryLimitInMb": os.environ.get("SCF_MEMORY", ""),
            "functionName": os.environ.get("SCF_FUNCTIONNAME", ""),
            "functionVersion": os.environ.get("SCF_FUNCTIONVERSION", ""),
            "requestId": self.headers.get("X-Scf-Request-Id", ""),
        }
        try:
            result = handle(event, context)
        except Exception:
            traceback.print_exc()
            sys.stderr.flush()
            self.answer(500, {"Content-Type": "application/json"}, b'{"error":"the handler raised an exception"}')
            return
        if isinstance(result, dict) and "statusCode" in result:
            out = result.get("body", "")
            headers = result.get("headers") or {}
            if not isinstance(out, str):
                out = json.dumps(out)
                headers.setdefault("Content-Type", "application/json")
            self.answer(int(result["statusCode"]), headers, out.encode())
        else:
            self.answer(200, {"Content-Type": "application/json"}, json.dumps(result).encode())
        sys.stdout.flush()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = call


http.server.ThreadingHTTPServer(("0.0.0.0", 9000), Handler).serve_forever()
