/**
 * What a user sees when a call is refused: the message names the bad value
 * briefly and safely. A 10 MB string or a million-item array is cut short,
 * and a value that throws when looked at (a revoked Proxy, a Proxy whose
 * traps throw) still gets the typed error, not the trap's exception.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { Engine, InvalidAddressFormatError, Server, Stream, setLogger } from "../src/index.js";
import type { Address } from "../src/index.js";
import { freshEngine } from "./helpers.js";

const huge = "x".repeat(10_000_000);

function revokedProxy(): object {
  const { proxy, revoke } = Proxy.revocable({}, {});
  revoke();
  return proxy;
}

const trappingProxy = new Proxy({}, {
  get() {
    throw new Error("get trap");
  },
  getPrototypeOf() {
    throw new Error("getPrototypeOf trap");
  },
});

test("a huge string, array or nested value is described in a few dozen characters, with its size", (t) => {
  const engine = freshEngine(t);
  const s = new Stream({ engine });
  assert.throws(
    () => (s.bufferSize = huge as unknown as number),
    (e: Error & { code?: string }) => {
      assert.ok(e instanceof TypeError);
      assert.equal(e.code, "ERR_INVALID_ARG_TYPE");
      assert.ok(e.message.length < 300, `${e.message.length} characters`);
      assert.match(e.message, /^bufferSize must be a positive integer, got "x{64}\.\.\." \(10000000 characters\)\.$/);
      return true;
    },
  );
  assert.throws(
    () => new Server(null, { engine }).listen(["", huge] as unknown as Address),
    (e: Error) => e instanceof InvalidAddressFormatError && e.message.length < 300 && e.message.includes("(10000000 characters)"),
  );
  assert.throws(
    () => (s.idleTimeout = new Array(1_000_000).fill(1) as unknown as number),
    (e: Error) => e instanceof TypeError && e.message.includes("[1, 1, 1, 1, 1, 1, 1, 1, ... 999992 more]") && e.message.length < 300,
  );
  assert.throws(
    () => s.connect([Buffer.alloc(10_000_000), 80] as unknown as Address),
    (e: Error) => e instanceof InvalidAddressFormatError && e.message.includes("[<Buffer 10000000 bytes>, 80]") && e.message.length < 300,
  );
  assert.throws(() => setLogger(huge as never), (e: Error) => e instanceof TypeError && e.message.length < 300);
});

test("a revoked or trapping Proxy gets the typed error, not the Proxy's own exception", (t) => {
  const engine = freshEngine(t);
  for (const value of [revokedProxy(), trappingProxy]) {
    const s = new Stream({ engine });
    assert.throws(() => (s.bufferSize = value as unknown as number), (e: Error & { code?: string }) => e instanceof TypeError && e.code === "ERR_INVALID_ARG_TYPE");
    assert.throws(() => (s.encoding = value as unknown as BufferEncoding), (e: Error & { code?: string }) => e instanceof TypeError && e.code === "ERR_INVALID_ARG_TYPE");
    assert.throws(() => new Server(null, { engine }).listen(["", value] as unknown as Address), InvalidAddressFormatError);
    assert.throws(() => new Server(value as unknown as typeof Stream, { engine }), (e: Error & { code?: string }) => e.code === "ERR_INVALID_ARG_TYPE");
    assert.throws(() => new Engine().defer(value as unknown as number, () => {}), RangeError);
  }
  assert.throws(() => new Server(null, { engine }).listen(trappingProxy as unknown as Address), InvalidAddressFormatError);
});

test("control characters and line separators in a described string are escaped", (t) => {
  const s = new Stream({ engine: freshEngine(t) });
  assert.throws(
    () => (s.encoding = "utf8\n\u001b[31mred\u009b\u2028" as BufferEncoding),
    (e: Error) => {
      assert.ok(!/[\n\u001b\u009b\u2028]/.test(e.message), JSON.stringify(e.message));
      assert.match(e.message, /"utf8\\n\\u001b\[31mred\\u009b\\u2028"/);
      return true;
    },
  );
});
