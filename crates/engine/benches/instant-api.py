#!/usr/bin/env python3
# A Docker API server on a unix socket that answers the five requests of `docker exec` at once
# with canned replies and runs nothing: timing the CLI against it gives the floor no engine can
# go under (CLI start-up, its requests, a new connection for the hijacked stream).
# Usage: instant-api.py SOCKET_PATH   (latency.sh starts it)
import json, os, socketserver, sys
PATH = sys.argv[1]
def resp(code, reason, body=b"", ctype="application/json", extra=""):
    h = f"HTTP/1.1 {code} {reason}\r\nApi-Version: 1.45\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    return h.encode() + body
class H(socketserver.StreamRequestHandler):
    def handle(self):
        while True:
            line = self.rfile.readline()
            if not line: return
            method, path, _ = line.decode().split(" ", 2)
            length = 0
            while True:
                h = self.rfile.readline()
                if h in (b"\r\n", b""): break
                k, v = h.decode().split(":", 1)
                if k.lower() == "content-length": length = int(v)
            if length: self.rfile.read(length)
            if path == "/_ping":
                self.wfile.write(resp(200, "OK", b"" if method == "HEAD" else b"OK", "text/plain", "Ostype: linux\r\n"))
            elif path.endswith("/exec") and method == "POST":
                self.wfile.write(resp(201, "Created", b'{"Id":"e1"}'))
            elif "/exec/e1/start" in path:
                self.wfile.write(b"HTTP/1.1 101 UPGRADED\r\nContent-Type: application/vnd.docker.raw-stream\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n")
                self.wfile.flush(); return
            elif "/exec/e1/json" in path:
                self.wfile.write(resp(200, "OK", json.dumps({"ID":"e1","Running":False,"ExitCode":0,"Pid":0}).encode()))
            elif "/containers/" in path and path.endswith("/json"):
                self.wfile.write(resp(200, "OK", json.dumps({"Id":"c"*64,"State":{"Status":"running","Running":True,"Paused":False,"Restarting":False},"Config":{"Tty":False}}).encode()))
            else:
                self.wfile.write(resp(404, "Not Found", b'{"message":"no"}'))
            self.wfile.flush()
class S(socketserver.ThreadingMixIn, socketserver.UnixStreamServer): daemon_threads = True
if os.path.exists(PATH): os.unlink(PATH)
S(PATH, H).serve_forever()
