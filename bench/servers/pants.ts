/**
 * The same benchmark jobs written with pants-ts: a connection class per job,
 * framed by `readDelimiter`, served by a `Server` (TLS through `sslOptions`).
 *
 * Configuration from the environment (see common.ts); the transport from
 * PANTS_TS_TRANSPORT (native or js; TLS is always node:tls). Prints
 * "READY <port> transport=<native|js>".
 */
import { Server, Stream } from "pants-ts";
import type { Address, ServerOptions } from "pants-ts";
import { HTTP_RESPONSE, announce, readConfig } from "./common.js";

const NEWLINE = Buffer.from("\n", "latin1");

/** One line in, the same line out. */
class LineEcho extends Stream {
  override onConnect(): void {
    this.readDelimiter = "\n";
  }
  override onRead(line: Buffer): void {
    this.write(line);
    this.write(NEWLINE);
  }
}

/** Every chunk back as it came (pants-ts stops reading on its own while the peer is slow). */
class RawEcho extends Stream {
  override onRead(chunk: Buffer): void {
    this.write(chunk);
  }
}

/** RawEcho by a handler that writes each chunk and keeps none: reads may be lent. */
class LentRawEcho extends RawEcho {
  override onConnect(): void {
    this.reuseReadBuffer = true;
  }
}

/** One fixed response per request head. */
class HttpResponder extends Stream {
  override onConnect(): void {
    this.readDelimiter = "\r\n\r\n";
  }
  override onRead(): void {
    this.write(HTTP_RESPONSE);
  }
}

const config = readConfig();
const options: ServerOptions = {};
if (config.tls !== null) options.sslOptions = { certfile: config.tls.certFile, keyfile: config.tls.keyFile };
const ConnectionClass = config.scenario === "http" ? HttpResponder : config.lent ? LentRawEcho : config.echo === "raw" ? RawEcho : LineEcho;
const server = new Server(ConnectionClass, options);
server.listen([config.host, config.port], 1024);
await server.ready();
const address: Address | null = server.localAddress;
if (!Array.isArray(address)) throw new Error(`unexpected listening address ${String(address)}`);
announce(address[1], server.transport);
