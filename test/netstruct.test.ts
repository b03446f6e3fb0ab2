import { describe, it } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { NetStruct } from "../src/framing/netstruct.js";

/*
 * Ground truth: the vectors below were produced with CPython 3.11.7's
 * `struct` module following netstruct's algorithm (split the format at each
 * `$`, pack every segment with the byte order prefix, default "!", put the
 * string's byte length in place of the segment's last value and append the
 * string), then pasted here as literals.
 */

const b = (hex: string): Buffer => Buffer.from(hex, "hex");

/** [format, values (strings as Buffers), packed hex, minimum size] */
const VECTORS: [string, unknown[], string, number][] = [
  ["ih$5b", [1298, b("64656661756c74"), 0, 0, 1, 0, 8], "00000512000764656661756c740000010008", 11],
  ["ih$5b", [1298, b("6c6172676542696f6d6573"), 0, 0, 1, 0, 8], "00000512000b6c6172676542696f6d65730000010008", 11],
  ["!L$", [b("68656c6c6f")], "0000000568656c6c6f", 4],
  ["b$", [b("48656c6c6f20576f726c6421")], "0c48656c6c6f20576f726c6421", 1],
  ["b$i", [b("48656c6c6f2e"), 42], "0648656c6c6f2e0000002a", 5],
  ["b$4h", [b("48656c6c6f"), 258, 772, 1286, 1800], "0548656c6c6f0102030405060708", 9],
  ["3H$", [1, 2, b("78797a")], "00010002000378797a", 6],
  ["<H$H$", [b("6162"), b("")], "020061620000", 4],
  [">B$ 2x h", [b("00ff"), -2], "0200ff0000fffe", 5],
  ["@b$i", [b("616263"), 7], "0361626307000000", 5],
  ["@bi$", [1, b("616263")], "0100000003000000616263", 8],
  ["=q$", [b("7879")], "02000000000000007879", 8],
  ["Q$B", [b("7a"), 9], "00000000000000017a09", 9],
  ["@n$", [b("6e")], "01000000000000006e", 8],
  ["@L$", [b("4c")], "01000000000000004c", 8],
  ["<l$e", [b("686579"), 1.5], "03000000686579003e", 6],
  ["!h$?", [b(""), true], "000001", 3],
  ["", [], "", 0],
  ["B$c3p", [b(""), b("63"), b("7071")], "0063027071", 5],
];

const CANONICAL = b("00000512000764656661756c740000010008");
const CANONICAL_VALUES = [1298, Buffer.from("default"), 0, 0, 1, 0, 8];

/** Asserts that `parse` sees no whole record in any proper prefix of `record`. */
function checkPrefixes(ns: NetStruct, record: Buffer): void {
  let previous = 0;
  for (let n = 0; n < record.length; n++) {
    const result = ns.parse(record.subarray(0, n));
    assert.ok("needed" in result, `prefix of ${n} bytes gave a record`);
    assert.ok(result.needed > n, `needed ${result.needed} for a prefix of ${n} bytes`);
    assert.ok(result.needed <= record.length, `needed ${result.needed} overshoots ${record.length}`);
    assert.ok(result.needed >= previous, "needed never decreases as bytes arrive");
    previous = result.needed;
  }
  const whole = ns.parse(record);
  assert.ok("values" in whole);
  assert.equal(whole.consumed, record.length);
}

describe("NetStruct: the canonical example", () => {
  const ns = new NetStruct("ih$5b");

  it("unpacks the 18-byte record", () => {
    assert.deepEqual(ns.unpack(CANONICAL), CANONICAL_VALUES);
  });

  it("packs the values back to the same bytes", () => {
    assert.deepEqual(ns.pack(...CANONICAL_VALUES), CANONICAL);
    assert.deepEqual(ns.pack(1298, "default", 0, 0, 1, 0, 8), CANONICAL);
    assert.deepEqual(ns.pack(1298, new Uint8Array(Buffer.from("default")), 0, 0, 1, 0, 8), CANONICAL);
  });

  it("has a minimum size of 11 bytes and 7 values", () => {
    assert.equal(ns.minimumSize, 11);
    assert.equal(ns.valueCount, 7);
    assert.equal(ns.format, "ih$5b");
  });

  it("reports what it needs at every prefix", () => {
    const needed = [];
    for (let n = 0; n < CANONICAL.length; n++) {
      const result = ns.parse(CANONICAL.subarray(0, n));
      assert.ok("needed" in result);
      needed.push(result.needed);
    }
    // Until the length prefix is complete only the minimum is known; then the exact length.
    assert.deepEqual(needed, [11, 11, 11, 11, 11, 11, ...Array<number>(12).fill(18)]);
    checkPrefixes(ns, CANONICAL);
  });

  it("packs and unpacks !L$", () => {
    const long = new NetStruct("!L$");
    assert.equal(long.minimumSize, 4);
    assert.equal(long.pack("hello").toString("hex"), "0000000568656c6c6f");
    assert.deepEqual(long.unpack(b("0000000568656c6c6f")), [Buffer.from("hello")]);
    assert.deepEqual(long.parse(b("00000005")), { needed: 9 });
  });
});

describe("NetStruct: vectors", () => {
  it("packs, unpacks and sizes every vector like Python", () => {
    for (const [format, values, hex, minimumSize] of VECTORS) {
      const ns = new NetStruct(format);
      assert.equal(ns.pack(...values).toString("hex"), hex, `pack ${JSON.stringify(format)}`);
      assert.deepEqual(ns.unpack(b(hex)), values, `unpack ${JSON.stringify(format)}`);
      assert.equal(ns.minimumSize, minimumSize, `minimumSize ${JSON.stringify(format)}`);
      assert.equal(ns.valueCount, values.length);
      checkPrefixes(ns, b(hex));
    }
  });

  it("defaults to network byte order", () => {
    assert.equal(new NetStruct("hI").pack(1, 2).toString("hex"), "000100000002");
    assert.equal(new NetStruct("<hI").pack(1, 2).toString("hex"), "010002000000");
    // No implicit native alignment without '@'.
    assert.equal(new NetStruct("bi").minimumSize, 5);
  });

  it("applies a repeat count to the integer, whose last item is the length", () => {
    const ns = new NetStruct("3H$");
    assert.equal(ns.valueCount, 3);
    assert.equal(ns.minimumSize, 6);
    assert.deepEqual(ns.unpack(b("00010002000378797a")), [1, 2, Buffer.from("xyz")]);
  });

  it("restarts @ alignment after each string, as netstruct's per-segment structs do", () => {
    const ns = new NetStruct("@b$i");
    assert.equal(ns.minimumSize, 5);
    assert.deepEqual(ns.unpack(b("03616263" + "07000000")), [Buffer.from("abc"), 7]);
    // Within a segment, items are aligned as usual: 3 pad bytes before the int.
    assert.equal(new NetStruct("@bi$").minimumSize, 8);
  });

  it("accepts empty formats and empty strings", () => {
    const empty = new NetStruct("");
    assert.equal(empty.minimumSize, 0);
    assert.deepEqual(empty.parse(Buffer.alloc(0)), { values: [], consumed: 0 });
    assert.deepEqual(empty.pack(), Buffer.alloc(0));
    assert.deepEqual(new NetStruct("B$").unpack(b("00")), [Buffer.alloc(0)]);
  });

  it("encodes string values as UTF-8", () => {
    assert.equal(new NetStruct("B$").pack("h\u00e9").toString("hex"), "0368c3a9");
  });
});

describe("NetStruct: incremental parsing", () => {
  it("parses several records back to back", () => {
    const ns = new NetStruct("B$H$b");
    const records = [
      ns.pack("one", "", -1),
      ns.pack("", "two", 2),
      ns.pack("three", "four", 3),
      ns.pack("", "", 0),
    ];
    const stream = Buffer.concat(records);
    let offset = 0;
    const seen: unknown[][] = [];
    while (offset < stream.length) {
      const result = ns.parse(stream.subarray(offset));
      assert.ok("values" in result);
      seen.push(result.values);
      offset += result.consumed;
    }
    assert.equal(offset, stream.length);
    assert.deepEqual(seen, [
      [Buffer.from("one"), Buffer.alloc(0), -1],
      [Buffer.alloc(0), Buffer.from("two"), 2],
      [Buffer.from("three"), Buffer.from("four"), 3],
      [Buffer.alloc(0), Buffer.alloc(0), 0],
    ]);
  });

  it("ignores bytes after the record in parse, but not in unpack", () => {
    const ns = new NetStruct("b$4h");
    const data = b("0548656c6c6f0102030405060708") ;
    const withTail = Buffer.concat([data, Buffer.from("Test Here.")]);
    assert.deepEqual(ns.parse(withTail), { values: [Buffer.from("Hello"), 258, 772, 1286, 1800], consumed: data.length });
    assert.throws(() => ns.unpack(withTail), { name: "RangeError", message: "unpack requires a buffer of 14 bytes (got 24)" });
    assert.throws(() => ns.unpack(data.subarray(0, 13)), { name: "RangeError", message: "unpack requires at least 14 bytes (got 13)" });
    assert.throws(() => ns.unpack(data.subarray(0, 3)), { name: "RangeError", message: "unpack requires at least 14 bytes (got 3)" });
  });

  it("gives a lower bound before later length prefixes are readable", () => {
    const ns = new NetStruct("B$B$");
    assert.deepEqual(ns.parse(Buffer.alloc(0)), { needed: 2 });
    assert.deepEqual(ns.parse(b("03")), { needed: 5 });
    assert.deepEqual(ns.parse(b("03616263")), { needed: 5 });
    assert.deepEqual(ns.parse(b("0361626302")), { needed: 7 });
    assert.deepEqual(ns.parse(b("036162630278")), { needed: 7 });
  });

  it("returns $ strings as views into the parsed buffer", () => {
    const backing = Buffer.from("xx" + "0361626300" + "yy", "latin1");
    const data = new Uint8Array(backing.buffer, backing.byteOffset + 2, 5);
    data.set(b("0361626300"));
    const result = new NetStruct("B$B").parse(data);
    assert.ok("values" in result);
    const [text] = result.values as [Buffer];
    assert.ok(Buffer.isBuffer(text));
    assert.equal(text.toString(), "abc");
    data[2] = 0x42;
    assert.equal(text.toString(), "aBc");
  });

  it("handles a large string without scanning it", () => {
    const ns = new NetStruct("I$B");
    const big = ns.pack(Buffer.alloc(5_000_000, 0x61), 7);
    // A partial record reports the exact total at once.
    assert.deepEqual(ns.parse(big.subarray(0, 1000)), { needed: big.length });
    const whole = ns.parse(big);
    assert.ok("values" in whole);
    assert.equal((whole.values[0] as Buffer).length, 5_000_000);
    assert.equal(whole.values[1], 7);
  });

  it("rejects negative length prefixes", () => {
    assert.throws(() => new NetStruct("b$").parse(b("ff")), { name: "RangeError", code: "ERR_MALFORMED_FRAME", message: /negative length prefix -1/ });
    assert.throws(() => new NetStruct("<i$").parse(b("feffffff")), { name: "RangeError", message: /negative length prefix -2/ });
    assert.throws(() => new NetStruct("q$").unpack(b("8000000000000000")), RangeError);
    assert.throws(() => new NetStruct("@l$").parse(b("ffffffffffffffff")), RangeError);
  });

  it("rejects length prefixes that would make a record longer than 2**53 - 1 bytes", () => {
    assert.deepEqual(new NetStruct("Q$").parse(b("0000010000000000")), { needed: 8 + 2 ** 40 });
    assert.throws(() => new NetStruct("Q$").parse(b("0020000000000000")), { name: "RangeError", code: "ERR_MALFORMED_FRAME", message: /too large/ });
    assert.throws(() => new NetStruct("Q$").parse(b("ffffffffffffffff")), RangeError);
  });
});

describe("NetStruct: errors", () => {
  it("rejects strings too long for their length prefix", () => {
    const limits: [string, number][] = [["b$", 127], ["B$", 255], ["h$", 32767], ["H$", 65535]];
    for (const [format, max] of limits) {
      const ns = new NetStruct(format);
      assert.equal(ns.pack(Buffer.alloc(max)).length, ns.minimumSize + max);
      assert.throws(() => ns.pack(Buffer.alloc(max + 1)), {
        name: "RangeError",
        message: `string of ${max + 1} bytes is too long for its '${format[0]}' length prefix (at most ${max})`,
      });
    }
    // The length is of the UTF-8 encoding: 128 two-byte characters are 256 bytes.
    assert.throws(() => new NetStruct("B$").pack("\u00e9".repeat(128)), RangeError);
  });

  it("rejects a wrong number of values or a string of the wrong type", () => {
    const ns = new NetStruct("ih$5b");
    assert.throws(() => ns.pack(1, "x", 0, 0, 1, 0), { name: "TypeError", message: "pack expected 7 items for packing (got 6)" });
    assert.throws(() => ns.pack(1, 7, 0, 0, 1, 0, 8), { name: "TypeError", message: /argument 1 for 'h\$' must be a Buffer/ });
    assert.throws(() => ns.pack(1.5, "x", 0, 0, 1, 0, 8), TypeError);
    assert.throws(() => ns.pack(1, "x", 0, 0, 1, 0, 128), RangeError);
    assert.throws(() => ns.parse("abc" as unknown as Uint8Array), TypeError);
  });

  it("rejects malformed formats, naming the position", () => {
    assert.throws(() => new NetStruct("$"), { name: "RangeError", code: "ERR_INVALID_ARG_VALUE" });
    const bad: [string, RegExp][] = [
      ["$", /'\$' at index 0 .* must directly follow an integer format code/],
      ["!$", /'\$' at index 1/],
      ["b$$", /'\$' at index 2/],
      ["i5$", /'\$' at index 2/],
      ["h $", /'\$' at index 2/],
      ["x$", /'\$' at index 1/],
      ["f$", /'\$' at index 1/],
      ["3s$", /'\$' at index 2/],
      ["0h$", /repeat count of 0/],
      ["zh$", /bad char "z" at index 0 in struct format "zh\$"/],
      ["h$hz", /bad char "z" at index 3 in struct format "h\$hz"/],
      ["<n$", /'n' is only available in native '@' mode/],
      ["h$4", /repeat count given without format specifier at index 2/],
      ["h$<", /byte order character/],
    ];
    for (const [format, message] of bad) {
      assert.throws(() => new NetStruct(format), { name: "RangeError", message }, JSON.stringify(format));
    }
    assert.throws(() => new NetStruct(42 as unknown as string), TypeError);
  });
});

// ---- randomized round trips -------------------------------------------------

const LENGTH_LIMITS: Record<string, number> = { b: 127, B: 255, h: 300, H: 300, i: 300, I: 300, q: 300, Q: 300 };

interface Piece {
  /** Format text of the piece. */
  format: string;
  /** Values to pack. */
  values: fc.Arbitrary<unknown[]>;
}

/** One struct code with values for it (big-endian or little-endian standard sizes). */
const plainPiece: fc.Arbitrary<Piece> = fc.constantFrom<Piece>(
  { format: "b", values: fc.tuple(fc.integer({ min: -128, max: 127 })) },
  { format: "2H", values: fc.tuple(fc.integer({ min: 0, max: 65535 }), fc.integer({ min: 0, max: 65535 })) },
  { format: "i", values: fc.tuple(fc.integer()) },
  { format: "Q", values: fc.tuple(fc.bigInt({ min: 0n, max: 2n ** 64n - 1n })) },
  { format: "?", values: fc.tuple(fc.boolean()) },
  { format: "d", values: fc.tuple(fc.double({ noNaN: true })) },
  { format: "3x", values: fc.constant([]) },
  { format: "4s", values: fc.tuple(fc.uint8Array({ minLength: 4, maxLength: 4 }).map((u) => Buffer.from(u))) },
);

/** An integer code followed by `$`, with a string that fits it. */
const stringPiece: fc.Arbitrary<Piece> = fc.constantFrom(..."bBhHiIqQ").map((code) => ({
  format: `${code}$`,
  values: fc.tuple(fc.uint8Array({ maxLength: LENGTH_LIMITS[code]! }).map((u) => Buffer.from(u))),
}));

const netCase = fc
  .record({
    prefix: fc.constantFrom("", "!", "<", ">", "="),
    pieces: fc.array(fc.oneof(plainPiece, stringPiece), { maxLength: 8 }),
  })
  .chain(({ prefix, pieces }) =>
    fc.tuple(...pieces.map((p) => p.values)).map((values) => ({
      format: prefix + pieces.map((p) => p.format).join(" "),
      values: values.flat(),
    })),
  );

describe("NetStruct: randomized round trips", () => {
  it("unpack(pack(values)) returns the values, and parse needs more at every prefix", () => {
    fc.assert(
      fc.property(netCase, fc.uint8Array({ maxLength: 8 }), ({ format, values }, junk) => {
        const ns = new NetStruct(format);
        const packed = ns.pack(...values);
        assert.ok(packed.length >= ns.minimumSize);
        assert.deepEqual(ns.unpack(packed), values);
        checkPrefixes(ns, packed);
        const result = ns.parse(Buffer.concat([packed, junk]));
        assert.ok("values" in result);
        assert.equal(result.consumed, packed.length);
        assert.deepEqual(result.values, values);
      }),
      { numRuns: 300 },
    );
  });

  it("parses any stream of records split at arbitrary points", () => {
    const ns = new NetStruct("B$ h H$");
    const record = fc.tuple(
      fc.uint8Array({ maxLength: 20 }).map((u) => Buffer.from(u)),
      fc.integer({ min: -32768, max: 32767 }),
      fc.uint8Array({ maxLength: 20 }).map((u) => Buffer.from(u)),
    );
    fc.assert(
      fc.property(fc.array(record, { maxLength: 6 }), fc.array(fc.integer({ min: 1, max: 9 })), (records, cuts) => {
        const stream = Buffer.concat(records.map((r) => ns.pack(...r)));
        // Feed the stream in chunks, parsing whenever enough bytes are buffered.
        let buffered = Buffer.alloc(0);
        let fed = 0;
        let cut = 0;
        const out: unknown[][] = [];
        while (fed < stream.length || buffered.length > 0) {
          const result = ns.parse(buffered);
          if ("values" in result) {
            out.push(result.values);
            buffered = buffered.subarray(result.consumed);
            continue;
          }
          assert.ok(result.needed > buffered.length);
          if (fed === stream.length) break;
          const step = cuts.length > 0 ? cuts[cut++ % cuts.length]! : 1;
          buffered = Buffer.concat([buffered, stream.subarray(fed, fed + step)]);
          fed = Math.min(stream.length, fed + step);
        }
        assert.equal(buffered.length, 0);
        assert.deepEqual(out, records);
      }),
      { numRuns: 200 },
    );
  });
});
