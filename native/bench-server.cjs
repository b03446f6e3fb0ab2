'use strict';
// A benchmark server written directly on the addon, for the side-by-side kit
// in shared/bench (same interface as its servers/node/net_server.js):
//   env: PORT (required), HOST (default 127.0.0.1), SCENARIO = echo-line | echo-raw | http
//   echo-line: the addon frames by '\n'; each line is written back with its '\n'
//   echo-raw : writes back whatever arrives (stops reading while writes are queued)
//   http     : the addon frames by "\r\n\r\n"; a fixed HTTP/1.1 200 per request
// e.g.  ./run.py -s A --server 'pants-native=node /path/to/native/bench-server.cjs' --servers node-net,pants-native
const path = require('path');
const native = require(path.join(__dirname, '..', 'build', 'Release', 'pants_native.node'));

const PORT = Number(process.env.PORT);
const HOST = process.env.HOST || '127.0.0.1';
const SCENARIO = process.env.SCENARIO || 'echo-line';
const RESPONSE = Buffer.from(
  'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nHello, World!');
const NL = Buffer.from('\n');
const CRLF2 = Buffer.from('\r\n\r\n');
const noop = () => {};

let onRead;
if (SCENARIO === 'echo-raw') {
  onRead = (conn, data) => {
    if (conn.write(data) > 0) conn.readStop(); // resumed by onWritten
  };
} else if (SCENARIO === 'http') {
  onRead = (conn, data, frames, count) => {
    if (count < 0) return conn.close();
    for (let i = 0; i < count; i++) conn.write(RESPONSE);
  };
} else {
  onRead = (conn, data, frames, count) => {
    if (count < 0) return conn.close();
    // Each frame plus its '\n' is a view into data: no copy.
    for (let i = 0; i < count; i++) conn.write(data.subarray(frames[2 * i], frames[2 * i + 1] + 1));
  };
}

// The addon hands over the block its bytes were copied to; their offset and
// length follow `rest` in the frames array (src/native-binding.ts does the same).
const deliver = onRead;
native.init({
  onRead(conn, block, frames, count) {
    const at = count > 0 ? 2 * count + 1 : 1;
    deliver(conn, Buffer.from(block, frames[at], frames[at + 1]), frames, count);
  },
  onConnection(server, conn) {
    if (SCENARIO === 'echo-line') conn.setFraming(1, NL, 1 << 20);
    else if (SCENARIO === 'http') conn.setFraming(1, CRLF2, 1 << 16);
    conn.readStart();
  },
  onEnd: (conn) => conn.close(),
  onError: (conn) => conn.close(),
  onWritten: SCENARIO === 'echo-raw' ? (conn) => conn.readStart() : noop,
  onConnect: noop,
  onClose: noop,
  onUncaught: (err) => console.error(err),
});

native.listenTcp(HOST, PORT, 1024, false);
console.error(`pants_native server on ${HOST}:${PORT} scenario=${SCENARIO}`);
