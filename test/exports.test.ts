/**
 * The package (SPEC §1) and its errors (SPEC §10): what `pants-ts` and
 * `pants-ts/testing` export once built, and the class and `code` of the
 * errors an application meets on real sockets.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import {
  BufferOverflowError,
  Channel,
  ChannelStateError,
  ConnectError,
  InvalidAddressFormatError,
  InvalidReadDelimiterError,
  Server,
  Stream,
} from "../src/index.js";
import type { ServerOptions, Transport } from "../src/index.js";
import { freshEngine, listenLocal } from "./helpers.js";

const root = new URL("..", import.meta.url).pathname;

test("the built package exports SPEC §1's names from pants-ts and memoryPeer from pants-ts/testing; ESM, Node 20.10+, a pants-ts command", async () => {
  // Inside the package, so "pants-ts" resolves to dist/ by self-reference, as an application's import does.
  const main = (await import("pants-ts")) as Record<string, unknown>;
  for (const name of ["Engine", "Channel", "Stream", "Server", "Struct", "NetStruct", "runCluster", "setLogger", "relay", "ChannelStateError", "InvalidAddressFormatError", "BufferOverflowError", "ConnectError", "InvalidReadDelimiterError"]) {
    assert.equal(typeof main[name], "function", `pants-ts exports ${name}`);
  }
  const testing = (await import("pants-ts/testing")) as Record<string, unknown>;
  assert.equal(typeof testing.memoryPeer, "function", "pants-ts/testing exports memoryPeer");
  const pkg = JSON.parse(readFileSync(`${root}package.json`, "utf8")) as { name: string; type: string; engines: { node: string }; bin: Record<string, string> };
  assert.equal(pkg.name, "pants-ts");
  assert.equal(pkg.type, "module");
  // The oldest Node the runtime is tested on: 20.0 to 20.9 fail parts of it (see the README's Install section).
  assert.equal(pkg.engines.node, ">=20.10");
  const [major, minor] = process.versions.node.split(".").map(Number);
  assert.ok(major! > 20 || (major === 20 && minor! >= 10), `this Node (${process.version}) is one engines admits`);
  assert.ok(pkg.bin["pants-ts"], "the pants-ts command");
});

test("every error class of SPEC §10 extends Error and carries its code, as thrown or passed to a handler (real sockets)", async (t) => {
  const engine = freshEngine(t);
  for (const C of [ChannelStateError, InvalidAddressFormatError, BufferOverflowError, ConnectError, InvalidReadDelimiterError]) {
    assert.ok(C.prototype instanceof Error, C.name);
  }
  assert.ok(Stream.prototype instanceof Channel && Server.prototype instanceof Channel, "Stream and Server are channels");
  const caught = (fn: () => unknown): Error & { code?: string } => {
    try {
      fn();
    } catch (err) {
      return err as Error & { code?: string };
    }
    assert.fail("did not throw");
  };
  const notConnected = caught(() => new Stream({ engine }).write("x"));
  assert.ok(notConnected instanceof ChannelStateError);
  assert.equal(notConnected.code, "ERR_CHANNEL_STATE");
  const badAddress = caught(() => new Server(Stream, { engine }).listen({} as never));
  assert.ok(badAddress instanceof InvalidAddressFormatError);
  assert.equal(badAddress.code, "ERR_INVALID_ADDRESS");
  const server = new Server(Stream, { engine });
  const port = await listenLocal(server, t);
  const twice = caught(() => server.listen(["127.0.0.1", 0]));
  assert.ok(twice instanceof ChannelStateError);
  assert.equal(twice.code, "ERR_CHANNEL_STATE");
  const connecting = new Stream({ engine }).connect(["127.0.0.1", port]);
  const again = caught(() => connecting.connect(["127.0.0.1", port]));
  assert.ok(again instanceof ChannelStateError, "connect() on a connecting stream");
  assert.equal(again.code, "ERR_CHANNEL_STATE");
  await connecting.ready();
  connecting.close();
  const closed = caught(() => connecting.write("x"));
  assert.ok(closed instanceof ChannelStateError);
  assert.equal(closed.code, "ERR_CHANNEL_STATE");
});

test("the Transport type ServerOptions.transport takes is exported (npm run typecheck checks this file)", () => {
  const transports: Transport[] = ["native", "js"];
  const options: ServerOptions = { transport: transports[1] };
  assert.equal(options.transport, "js");
});
