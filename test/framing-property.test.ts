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
import { captureLogs } from "./helpers.js";

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

/** What a RegExp delimiter frames when all buffered text is searched again at every arrival (the behaviour before searches resumed near new bytes). */
function searchAllReference(re: RegExp, search: boolean, bytes: Buffer, sizes: number[]): unknown[] {
  const seen: unknown[] = [];
  const flags = re.flags.replace(/[gy]/g, ""); // a user's g or y flag never carries lastIndex between searches
  const searching = new RegExp(re.source, flags);
  const anchored = new RegExp(re.source, flags + "y");
  let text = "";
  let at = 0;
  for (let i = 0; at < bytes.length; i++) {
    const size = sizes[i % sizes.length]!;
    text += bytes.subarray(at, at + size).toString("latin1");
    at += size;
    for (;;) {
      anchored.lastIndex = 0;
      const m = search ? searching.exec(text) : anchored.exec(text);
      if (m === null) break;
      if (m.index + m[0].length === 0) return seen; // the stream gets InvalidReadDelimiterError and closes
      seen.push(search ? [`hex:${Buffer.from(text.slice(0, m.index), "latin1").toString("hex")}`] : [[...m]]);
      text = text.slice(m.index + m[0].length);
    }
  }
  return seen;
}

/** Patterns that match "" somewhere are refused or fail (InvalidReadDelimiterError): left out. */
function matchesEmpty(re: RegExp): boolean {
  const sticky = new RegExp(re.source, re.flags.replace(/[gy]/g, "") + "y");
  const probe = "ab;\n xba;;\nx a\nbb a;";
  for (let i = 0; i <= probe.length; i++) {
    sticky.lastIndex = i;
    if (sticky.exec(probe)?.[0] === "") return true;
  }
  return false;
}

test("a RegExp delimiter frames as searching all the buffered text again at every arrival would (random patterns, lookarounds, ^, \\b, flags)", async (t) => {
  // A search resumes near the new bytes when the pattern's reach is bounded;
  // this reference searches everything every time.
  captureLogs(t); // a pattern that matches "" only in some context fails the stream (logged), as the reference expects
  const atom = fc.constantFrom("a", "b", ";", "\\n", "[ab]", "[^a]", ".", "\\w", "\\s", "\\x61", "(a|bc)", "(?:;a)", "(?<n>b)");
  const quantifier = fc.constantFrom("", "", "", "?", "{2}", "{0,3}", "{1,2}?", "*", "+");
  const assertion = fc.constantFrom("", "", "", "", "^", "\\b", "\\B", "(?=a)", "(?!b)", "(?<=a)", "(?<!;)");
  const term = fc.tuple(assertion, atom, quantifier).map(([a, b, q]) => a + b + q);
  const pattern = fc
    .tuple(fc.array(fc.array(term, { minLength: 1, maxLength: 4 }).map((t) => t.join("")), { minLength: 1, maxLength: 3 }), fc.constantFrom("", "i", "m", "s", "u"))
    .map(([alternatives, flags]) => {
      try {
        return new RegExp(alternatives.join("|"), flags);
      } catch {
        return null; // a group name used twice
      }
    })
    .filter((re): re is RegExp => re !== null && !re.test("") && !matchesEmpty(re));
  const input = fc.array(fc.constantFrom(..."ab;\n x"), { maxLength: 80 }).map((chars) => Buffer.from(chars.join(""), "latin1"));
  await fc.assert(
    fc.asyncProperty(pattern, fc.boolean(), input, fc.array(fc.integer({ min: 1, max: 9 }), { minLength: 1, maxLength: 6 }), async (re, search, bytes, sizes) => {
      const setup = (s: Stream) => {
        s.readDelimiter = re;
        s.regexSearch = search;
      };
      assert.deepEqual(await frames(setup, bytes, sizes), searchAllReference(re, search, bytes, sizes), `${String(re)} regexSearch ${search}`);
    }),
    { numRuns: 400 },
  );
});

test("a RegExp delimiter frames as searching all the buffered text again would, for constructs whose reach is easy to misjudge (nested and quantified groups, lookarounds in lookarounds, classes with ], \\c, \\k, octal, \\u{}, a literal {, lazy quantifiers, d/g/y flags, case folds)", async (t) => {
  captureLogs(t);
  const atom = fc.constantFrom(
    "a", "b", "s", "k", ";", "\\n", ".", "\\w", "\\W", "\\S", "[ab]", "[^a]", "[\\]a]", "[\\b]", "[]", "[^]", "]", "}", "{", "a{", "a{,2}",
    "\\cJ", "\\k", "\\0", "\\141", "\\x61", "\\u0062", "\\u{2}", "\u017f", "\u212a", "K", "\u00e9",
  );
  const quantifier = fc.constantFrom("", "", "", "?", "??", "{2}", "{0}", "{0,2}", "{1,3}?", "{3}", "+");
  const group = (inner: string): fc.Arbitrary<string> =>
    fc.constantFrom("(", "(?:", "(?=", "(?!", "(?<=", "(?<!").chain((open) => fc.constantFrom(")", "){2}", ")?", "){0,3}").map((close) => `${open}${inner}${close}`));
  const leaf = fc.tuple(fc.constantFrom("", "", "", "^", "$", "\\b", "\\B"), atom, quantifier).map(([a, b, q]) => a + b + q);
  const seq = (term: fc.Arbitrary<string>) => fc.array(term, { minLength: 1, maxLength: 3 }).map((t) => t.join(""));
  const alt = (term: fc.Arbitrary<string>) => fc.array(fc.oneof(seq(term), fc.constant("")), { minLength: 1, maxLength: 3 }).map((a) => a.join("|"));
  const level1 = fc.oneof({ weight: 3, arbitrary: leaf }, { weight: 1, arbitrary: alt(leaf).chain(group) });
  const level2 = fc.oneof({ weight: 3, arbitrary: level1 }, { weight: 1, arbitrary: alt(level1).chain(group) });
  const pattern = fc
    .tuple(alt(level2), fc.constantFrom("", "i", "m", "s", "u", "iu", "mu", "d", "g", "y", "imsu", "dgy"))
    .map(([source, flags]) => {
      try {
        return new RegExp(source, flags);
      } catch {
        return null; // not a valid pattern (a quantified lookbehind, \\k or a lone { in u mode...)
      }
    })
    .filter((re): re is RegExp => re !== null && !re.test("")); // "" at the frame's start fails the stream, as the reference expects
  const input = fc.array(fc.constantFrom(..."ab;\n sk_K\u00e9\u00c9\r"), { maxLength: 160 }).map((chars) => Buffer.from(chars.join(""), "latin1"));
  await fc.assert(
    fc.asyncProperty(pattern, fc.boolean(), input, fc.array(fc.oneof(fc.integer({ min: 1, max: 4 }), fc.integer({ min: 5, max: 40 })), { minLength: 1, maxLength: 6 }), async (re, search, bytes, sizes) => {
      const setup = (s: Stream) => {
        s.readDelimiter = re;
        s.regexSearch = search;
      };
      assert.deepEqual(await frames(setup, bytes, sizes), searchAllReference(re, search, bytes, sizes), `${String(re)} regexSearch ${search}`);
    }),
    { numRuns: Number(process.env.REGEX_PROPERTY_RUNS ?? 300) },
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

