/**
 * The framing property (SPEC §6): for random message sequences and random
 * splits of the byte stream into packets, every delimiter kind delivers
 * the same frames as feeding all the bytes at once — including splits
 * inside multi-byte delimiters and inside UTF-8 characters.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { NetStruct, Stream, Struct } from "../src/index.js";
import type { Decoder } from "../src/index.js";
import { memoryPeer } from "../src/testing.js";

/** Feeds `bytes` split at `cuts` into a stream using `setup`, returns what onRead saw. */
async function frames(setup: (s: Stream) => void, bytes: Buffer, sizes: number[] | null): Promise<unknown[]> {
  class Probe extends Stream {
    seen: unknown[] = [];
    override onConnect() {
      setup(this);
    }
    override onRead(...args: unknown[]) {
      this.seen.push(args.map(normalise));
    }
  }
  const peer = memoryPeer(Probe);
  await peer.send(bytes, sizes === null ? undefined : { chunkSize: sizes });
  return peer.stream.seen;
}

function normalise(v: unknown): unknown {
  if (Buffer.isBuffer(v)) return `hex:${v.toString("hex")}`;
  if (Array.isArray(v)) return [...v].map(normalise); // RegExpExecArray
  if (typeof v === "bigint") return `${v}n`;
  return v;
}

const chunkSizes = fc.array(fc.integer({ min: 1, max: 17 }), { minLength: 1, maxLength: 12 });
const runs = { numRuns: 60 };

/** Asserts the property for one delimiter kind. */
async function checkSplitInvariance(setup: (s: Stream) => void, bytes: Buffer, sizes: number[]): Promise<void> {
  const whole = await frames(setup, bytes, null);
  const split = await frames(setup, bytes, sizes);
  assert.deepEqual(split, whole);
}

const text = fc.string({ unit: "grapheme", maxLength: 12 }); // includes multi-byte UTF-8

test("string delimiters (one and several bytes, with UTF-8 content and encoding)", async () => {
  // A message may not hold the delimiter, nor end with a prefix of a
  // self-overlapping one ("|" before "||" would frame as "" then "|...").
  for (const delimiter of ["\n", "\r\n", "||", "€"]) {
    await fc.assert(
      fc.asyncProperty(fc.array(text.filter((s) => (s + delimiter).indexOf(delimiter) === s.length), { maxLength: 8 }), chunkSizes, fc.boolean(), async (messages, sizes, withEncoding) => {
        const bytes = Buffer.from(messages.map((m) => m + delimiter).join("") + "tail");
        const setup = (s: Stream) => {
          s.readDelimiter = delimiter;
          if (withEncoding) s.encoding = "utf8";
        };
        await checkSplitInvariance(setup, bytes, sizes);
        const got = await frames(setup, bytes, sizes);
        assert.deepEqual(got, messages.map((m) => [withEncoding ? m : `hex:${Buffer.from(m).toString("hex")}`]));
      }),
      runs,
    );
  }
});

test("Buffer delimiter with arbitrary binary content", async () => {
  const delimiter = Buffer.from([0xde, 0xad, 0xbe, 0xef]);
  await fc.assert(
    fc.asyncProperty(fc.uint8Array({ maxLength: 200 }), chunkSizes, async (content, sizes) => {
      const bytes = Buffer.concat([Buffer.from(content), delimiter, Buffer.from(content), delimiter]);
      await checkSplitInvariance((s) => (s.readDelimiter = delimiter), bytes, sizes);
    }),
    runs,
  );
});

test("null delimiter with encoding: the concatenated text is the same however it was split", async () => {
  await fc.assert(
    fc.asyncProperty(fc.string({ unit: "grapheme", maxLength: 60 }), chunkSizes, async (message, sizes) => {
      const got = await frames((s) => (s.encoding = "utf8"), Buffer.from(message), sizes);
      assert.equal(got.map((f) => (f as string[])[0]).join(""), message);
    }),
    runs,
  );
});

test("integer delimiters", async () => {
  await fc.assert(
    fc.asyncProperty(fc.integer({ min: 1, max: 9 }), fc.uint8Array({ maxLength: 120 }), chunkSizes, async (n, content, sizes) => {
      await checkSplitInvariance((s) => (s.readDelimiter = n), Buffer.from(content), sizes);
    }),
    runs,
  );
});

test("regex delimiters, search and anchored match (delimiters later bytes cannot extend)", async () => {
  await fc.assert(
    fc.asyncProperty(fc.array(fc.stringMatching(/^[a-z0-9 ]{0,10}$/), { maxLength: 8 }), chunkSizes, async (words, sizes) => {
      const search = Buffer.from(words.map((w) => `${w};`).join(""));
      await checkSplitInvariance((s) => (s.readDelimiter = /;/), search, sizes);
      const anchored = Buffer.from(words.map((w, i) => `k${i}=${w.replace(/ /g, "")}.`).join(""));
      await checkSplitInvariance(
        (s) => {
          s.readDelimiter = /k(\d+)=([a-z0-9]*)\./;
          s.regexSearch = false;
        },
        anchored,
        sizes,
      );
    }),
    runs,
  );
});

test("Struct and NetStruct delimiters", async () => {
  const header = new Struct("!HbQ");
  const record = new NetStruct("!H$I");
  await fc.assert(
    fc.asyncProperty(
      fc.array(fc.tuple(fc.integer({ min: 0, max: 65535 }), fc.integer({ min: -128, max: 127 }), fc.bigInt({ min: 0n, max: 2n ** 64n - 1n })), { maxLength: 6 }),
      fc.array(fc.tuple(fc.uint8Array({ maxLength: 40 }), fc.integer({ min: 0, max: 2 ** 32 - 1 })), { maxLength: 6 }),
      chunkSizes,
      async (headers, records, sizes) => {
        const a = Buffer.concat(headers.map((h) => header.pack(...h)));
        await checkSplitInvariance((s) => (s.readDelimiter = header), a, sizes);
        const b = Buffer.concat(records.map(([bytes, n]) => record.pack(Buffer.from(bytes), n)));
        await checkSplitInvariance((s) => (s.readDelimiter = record), b, sizes);
        assert.equal((await frames((s) => (s.readDelimiter = record), b, sizes)).length, records.length);
      },
    ),
    runs,
  );
});

test("Struct and NetStruct framing read every integer code as unpack() does, in every byte order", async () => {
  // Framing reads records with generated code; unpack() with the general reader: they must agree.
  for (const order of ["<", ">", "!", "="]) {
    const struct = new Struct(`${order}hHiIbB`);
    const record = new NetStruct(`${order}i$hI`);
    await fc.assert(
      fc.asyncProperty(
        fc.array(
          fc.tuple(
            fc.integer({ min: -32768, max: 32767 }),
            fc.integer({ min: 0, max: 65535 }),
            fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 }),
            fc.integer({ min: 0, max: 2 ** 32 - 1 }),
            fc.integer({ min: -128, max: 127 }),
            fc.integer({ min: 0, max: 255 }),
          ),
          { minLength: 1, maxLength: 6 },
        ),
        chunkSizes,
        async (rows, sizes) => {
          const bytes = Buffer.concat(rows.map((r) => struct.pack(...r)));
          assert.deepEqual(await frames((s) => (s.readDelimiter = struct), bytes, sizes), rows);
          const nsBytes = Buffer.concat(rows.map((r) => record.pack(Buffer.from([r[5]]), r[0], r[3])));
          const expected = rows.map((r) => [normalise(Buffer.from([r[5]])), r[0], r[3]]);
          assert.deepEqual(await frames((s) => (s.readDelimiter = record), nsBytes, sizes), expected);
        },
      ),
      { numRuns: 25 },
    );
  }
});

test("Decoder functions, given a view from the frame on (one parameter) or reading at an offset (two)", async () => {
  // Length-prefixed (1 byte) frames, decoded both ways.
  const viewed: Decoder = (buf) => (buf.length >= 1 + buf[0]! ? { consumed: 1 + buf[0]!, args: [buf.subarray(1, 1 + buf[0]!)] } : null);
  const atOffset: Decoder = (buf, start) => {
    const left = buf.length - start;
    return left >= 1 + buf[start]! ? { consumed: 1 + buf[start]!, args: [buf.subarray(start + 1, start + 1 + buf[start]!)] } : null;
  };
  for (const decoder of [viewed, atOffset]) {
    await fc.assert(
      fc.asyncProperty(fc.array(fc.uint8Array({ maxLength: 30 }), { maxLength: 8 }), chunkSizes, async (payloads, sizes) => {
        const bytes = Buffer.concat(payloads.map((p) => Buffer.concat([Buffer.from([p.length]), Buffer.from(p)])));
        const setup = (s: Stream) => (s.readDelimiter = decoder);
        await checkSplitInvariance(setup, bytes, sizes);
        assert.deepEqual(
          await frames(setup, bytes, null),
          payloads.map((p) => [normalise(Buffer.from(p))]),
        );
      }),
      runs,
    );
  }
});

test("switching delimiters mid-stream (header line, sized body, lines again)", async () => {
  await fc.assert(
    fc.asyncProperty(fc.array(fc.tuple(fc.stringMatching(/^[a-z]{0,8}$/), fc.uint8Array({ maxLength: 30 })), { maxLength: 6 }), chunkSizes, async (items, sizes) => {
      const bytes = Buffer.concat(items.map(([name, body]) => Buffer.concat([Buffer.from(`${name} ${body.length}\r\n`), Buffer.from(body)])));
      const setup = (s: Stream) => {
        s.readDelimiter = "\r\n";
        const original = s.onRead;
        s.onRead = function (this: Stream, ...args: unknown[]) {
          original.apply(this, args as [unknown]);
          if (this.readDelimiter === "\r\n") {
            const size = Number(String(args[0]).split(" ")[1]);
            this.readDelimiter = size > 0 ? size : "\r\n";
          } else {
            this.readDelimiter = "\r\n";
          }
        };
      };
      await checkSplitInvariance(setup, bytes, sizes);
    }),
    runs,
  );
});

