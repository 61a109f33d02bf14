"""An HTTP upload service for tests/tests/apps.rs: it reads the headers and the first 64 KiB of a
POST, then "processes" (sleeps) with the rest of the body unread, which is when the test kills it."""
import http.server
import os
import sys
import time


class Upload(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers["Content-Length"])
        first = len(self.rfile.read(65536))
        print(f"upload-server[{os.getpid()}]: POST of {length} bytes, {first} read, processing", flush=True)
        time.sleep(60)


port = int(sys.argv[1])
http.server.HTTPServer(("127.0.0.1", port), Upload).serve_forever()
