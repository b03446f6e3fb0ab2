/**
 * Fairness: one connection that keeps its socket full does not hold the
 * event loop for longer than node:net would. libuv reads a ready socket
 * until a read comes back short, up to 32 times: 2 MiB on node:net (64 KiB
 * reads); the native transport, reading 256 KiB at a time, yields after
 * 256 KiB in a row, so other connections and timers get their turn.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import { Server, Stream } from "../src/index.js";
import { freshEngine, listenLocal, waitFor } from "./helpers.js";

test("a client flooding tiny lines gets at most 2 MiB of them (node:net's most) delivered per turn of the loop", { timeout: 60_000 }, async (t) => {
  const engine = freshEngine(t);
  const total = 32 << 20;
  let frames = 0;
  let inTurn = 0;
  let maxPerTurn = 0;
  let turns = 0;
  let ticking = true;
  // A turn ends at the check phase: count the frames of the connection between two.
  const tick = () => {
    inTurn = 0;
    turns++;
    if (ticking) setImmediate(tick);
  };
  setImmediate(tick);
  t.after(() => {
    ticking = false;
  });
  class Sink extends Stream {
    override onConnect() {
      this.readDelimiter = "\n";
    }
    override onRead() {
      frames++;
      if (++inTurn > maxPerTurn) maxPerTurn = inTurn;
    }
  }
  const port = await listenLocal(new Server(Sink, { engine }), t);
  const sock = net.connect(port, "127.0.0.1");
  t.after(() => sock.destroy());
  sock.on("error", () => {});
  await new Promise((r) => sock.once("connect", r));
  const block = Buffer.alloc(2 << 20, "x\n");
  for (let sent = 0; sent < total; sent += block.length) sock.write(block);
  await waitFor(() => frames === total / 2, 50_000, `${total / 2} lines (${frames} so far)`);
  ticking = false;
  assert.ok(turns > 1, "the loop turned");
  assert.ok(maxPerTurn <= 1 << 20, `${maxPerTurn} lines of one connection in one turn`);
});
