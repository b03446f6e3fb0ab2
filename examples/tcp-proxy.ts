/**
 * tcp-proxy: a port forwarder. Every connection is relayed to UPSTREAM,
 * byte for byte, both ways, with relay(): backpressure per direction,
 * half-close passed on, and a reset or a failed upstream connect closing
 * the other side. With TLS_CERT it terminates TLS (the upstream is plain).
 *
 *   npx tsx examples/echo.ts &                               # an upstream on 127.0.0.1:4041
 *   UPSTREAM=127.0.0.1:4041 npx tsx examples/tcp-proxy.ts   # listens on 127.0.0.1:$PORT (default 4080; 0 picks a free port)
 *   echo hello | nc -q1 localhost 4080                       # the echo server's answer, through the proxy
 *
 * UPSTREAM is HOST:PORT or [IPv6]:PORT (default 127.0.0.1:4041). TLS_CERT
 * and TLS_KEY name PEM files (TLS_KEY defaults to TLS_CERT). Also
 * `UPSTREAM=... pants-ts serve examples/tcp-proxy.ts --listen 4080` (the
 * default export is the connection class).
 */
import { pathToFileURL } from "node:url";
import { Server, Stream, relay } from "pants-ts";
import type { Address } from "pants-ts";

/** "host:port" or "[v6]:port" as an Address. */
function parseHostPort(text: string): Address {
  const match = /^(?:\[([^\]]+)\]|([^:]+)):(\d+)$/.exec(text);
  if (match === null) throw new Error(`UPSTREAM must be HOST:PORT or [IPv6]:PORT, got ${JSON.stringify(text)}.`);
  return [match[1] ?? match[2]!, Number(match[3])];
}

const upstream = parseHostPort(process.env.UPSTREAM ?? "127.0.0.1:4041");

export default class TcpProxy extends Stream {
  override onConnect(): void {
    // Connecting: what the client sends meanwhile is held (up to 1 MiB), then sent.
    const target = new Stream({ engine: this.engine }).connect(upstream);
    void relay(this, target); // settles once both have closed; errors go to the streams' handlers
  }
}

// Run directly (not loaded by `pants-ts serve`): listen on PORT, stop on SIGTERM/SIGINT.
if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  const { TLS_CERT, TLS_KEY } = process.env;
  const server = new Server(TcpProxy, TLS_CERT ? { sslOptions: { certfile: TLS_CERT, keyfile: TLS_KEY || TLS_CERT } } : {});
  server.listen(["127.0.0.1", Number(process.env.PORT ?? 4080)]);
  await server.ready();
  const stop = async (): Promise<void> => {
    await server.shutdown(); // each client closes, and its upstream with it
    process.exit(0);
  };
  process.once("SIGTERM", stop).once("SIGINT", stop); // before the line below: a signal right after it is handled
  const [host, port] = server.localAddress as [string, number];
  console.log(`tcp-proxy listening on ${host}:${port}`);
}
