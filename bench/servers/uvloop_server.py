"""
The asyncio + uvloop peer of the benchmark servers (raw.ts, pants.ts): the
same jobs, written the fastest idiomatic way on uvloop, with asyncio.Protocol
callbacks (no streams, no coroutines per connection):

  echo-line  data_received frames lines with bytes.find; transport.write per line
  echo-raw   transport.write every chunk; pause_reading() while the transport
             is above its write high-water mark (pause_writing), resume_reading()
             when it drains (resume_writing)
  echo-raw-lent  the same as echo-raw (its handler keeps no chunk already)
  http       frames request heads by b"\\r\\n\\r\\n" with bytes.find; one fixed
             200 response with Content-Length per request

uvloop queues what a callback writes and sends it at the end of the loop
iteration (one writev), as pants-ts does. asyncio sets TCP_NODELAY on
accepted sockets.

Same environment as the Node servers (see common.ts): PORT (0: any), HOST
(default 127.0.0.1), SCENARIO; prints only "READY <port>". It needs the
python that has uvloop, e.g. Debian's python3-uvloop for /usr/bin/python3:

  PORT=4040 SCENARIO=echo-line /usr/bin/python3 bench/servers/uvloop_server.py
"""
import asyncio
import os
import sys

import uvloop

HTTP_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nHello, World!"


class LineEcho(asyncio.Protocol):
    """One line in, the same line out."""

    __slots__ = ("transport", "pending")

    def connection_made(self, transport):
        self.transport = transport
        self.pending = b""

    def data_received(self, data):
        if self.pending:
            data = self.pending + data
        write = self.transport.write
        start = 0
        while True:
            end = data.find(b"\n", start) + 1
            if end == 0:
                break
            write(data[start:end])
            start = end
        self.pending = data[start:]


class RawEcho(asyncio.Protocol):
    """Every chunk back; no reading while the peer does not take the echo."""

    __slots__ = ("transport",)

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)

    def pause_writing(self):
        self.transport.pause_reading()

    def resume_writing(self):
        self.transport.resume_reading()


class HttpResponder(asyncio.Protocol):
    """One fixed keep-alive response per request head."""

    __slots__ = ("transport", "pending")

    def connection_made(self, transport):
        self.transport = transport
        self.pending = b""

    def data_received(self, data):
        if self.pending:
            data = self.pending + data
        write = self.transport.write
        start = 0
        while True:
            at = data.find(b"\r\n\r\n", start)
            if at < 0:
                break
            write(HTTP_RESPONSE)
            start = at + 4
        self.pending = data[start:]


# echo-raw-lent: RawEcho already uses each chunk only inside data_received.
PROTOCOLS = {"echo-line": LineEcho, "echo-raw": RawEcho, "echo-raw-lent": RawEcho, "http": HttpResponder}


def fail(message):
    sys.stderr.write(f"bench server: {message}\n")
    sys.exit(2)


async def serve(protocol, host, port):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(protocol, host, port, backlog=1024)
    print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
    await server.serve_forever()


def main():
    scenario = os.environ.get("SCENARIO", "echo-line")
    protocol = PROTOCOLS.get(scenario) or fail(f"unknown SCENARIO {scenario!r} (one of {', '.join(PROTOCOLS)})")
    try:
        port = int(os.environ.get("PORT", "0"))
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        fail(f"bad PORT {os.environ.get('PORT')!r}")
    host = os.environ.get("HOST") or "127.0.0.1"
    uvloop.install()
    asyncio.run(serve(protocol, host, port))


if __name__ == "__main__":
    main()
