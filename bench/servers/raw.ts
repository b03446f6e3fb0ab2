/**
 * The baseline: hand-written servers on raw `node:net` / `node:tls`, doing
 * each benchmark job the way one would without a framework.
 *
 *   echo-line  frame by "\n" with Buffer#indexOf, write each line back
 *   echo-raw   write every chunk back; pause reading while the socket is backed up
 *              (echo-raw-lent: the same; the handler keeps no chunk already)
 *   http       frame requests by "\r\n\r\n", answer a fixed 200 with Content-Length
 *   tls-*      the same echoes over node:tls
 *
 * Configuration from the environment (see common.ts); prints "READY <port>".
 */
import net from "node:net";
import tls from "node:tls";
import { readFileSync } from "node:fs";
import { HTTP_RESPONSE, announce, readConfig } from "./common.js";

const NEWLINE = 0x0a;
const HEADERS_END = Buffer.from("\r\n\r\n", "latin1");

/** Calls onFrame(frame including its delimiter) for every complete frame; keeps the rest for later. */
function framer(delimiter: number | Buffer, onFrame: (frame: Buffer) => void): (chunk: Buffer) => void {
  const delimiterLength = typeof delimiter === "number" ? 1 : delimiter.length;
  let pending: Buffer | null = null;
  return (chunk) => {
    const data = pending === null ? chunk : Buffer.concat([pending, chunk]);
    let start = 0;
    let at: number;
    while ((at = data.indexOf(delimiter, start)) !== -1) {
      const end = at + delimiterLength;
      onFrame(data.subarray(start, end));
      start = end;
    }
    pending = start < data.length ? data.subarray(start) : null;
  };
}

function lineEcho(socket: net.Socket): void {
  socket.on("data", framer(NEWLINE, (line) => socket.write(line)));
}

function rawEcho(socket: net.Socket): void {
  socket.on("data", (chunk: Buffer) => {
    if (!socket.write(chunk)) socket.pause();
  });
  socket.on("drain", () => socket.resume());
}

function httpResponder(socket: net.Socket): void {
  socket.on("data", framer(HEADERS_END, () => socket.write(HTTP_RESPONSE)));
}

function ignoreErrors(socket: net.Socket): void {
  socket.on("error", () => {}); // resets from clients are normal; the socket closes
}

const config = readConfig();
let server: net.Server;
if (config.tls !== null) {
  const echo = config.echo === "line" ? lineEcho : rawEcho;
  server = tls.createServer(
    // noDelay from accept on, so the handshake's flights are not held back by Nagle either.
    { cert: readFileSync(config.tls.certFile), key: readFileSync(config.tls.keyFile), noDelay: true },
    (socket) => {
      ignoreErrors(socket);
      echo(socket);
    },
  );
  server.on("tlsClientError", () => {}); // a client that gave up mid-handshake
} else {
  const handler = config.scenario === "http" ? httpResponder : config.echo === "raw" ? rawEcho : lineEcho;
  server = net.createServer((socket) => {
    socket.setNoDelay(true);
    ignoreErrors(socket);
    handler(socket);
  });
}
server.listen({ host: config.host, port: config.port, backlog: 1024 }, () => {
  const address = server.address() as net.AddressInfo;
  announce(address.port);
});
