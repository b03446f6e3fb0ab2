import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { SocketAddress } from "node:net";
import fc from "fast-check";
import {
  PROXY_V1_MAX_LENGTH,
  PROXY_V2_HEADER_LENGTH,
  PROXY_V2_SIGNATURE,
  ProxyTlvType,
  encodeProxyV1,
  encodeProxyV2,
  parseProxyHeader,
  parseProxySsl,
} from "../src/proxy-protocol.js";
import type { ProxyHeader, ProxyParseResult, ProxyV2Fields } from "../src/proxy-protocol.js";
import { ProxyProtocolError } from "../src/errors.js";

// ---------------------------------------------------------------------------
// Helpers

/** Bytes from hex, ignoring whitespace. */
function hex(text: string): Buffer {
  return Buffer.from(text.replace(/\s+/g, ""), "hex");
}

const SIG_HEX = "0D0A0D0A000D0A515549540A";

/** A v2 header: signature, version/command byte, family byte, length, body. */
function v2(verCmd: number, fam: number, body: Buffer | string = Buffer.alloc(0), length?: number): Buffer {
  const b = typeof body === "string" ? hex(body) : body;
  const fixed = Buffer.alloc(4);
  fixed[0] = verCmd;
  fixed[1] = fam;
  fixed.writeUInt16BE(length ?? b.length, 2);
  return Buffer.concat([hex(SIG_HEX), fixed, b]);
}

function tlv(type: number, value: Buffer | string): Buffer {
  const v = typeof value === "string" ? Buffer.from(value, "utf8") : value;
  const head = Buffer.alloc(3);
  head[0] = type;
  head.writeUInt16BE(v.length, 1);
  return Buffer.concat([head, v]);
}

function unixPath(path: string): Buffer {
  const b = Buffer.alloc(108);
  Buffer.from(path, "utf8").copy(b);
  return b;
}

function complete(buf: Buffer): { header: ProxyHeader; consumed: number } {
  const r = parseProxyHeader(buf);
  assert.ok("header" in r, `expected a complete header, got ${JSON.stringify(r)}`);
  return r;
}

function needed(buf: Buffer): number {
  const r = parseProxyHeader(buf);
  assert.ok("needed" in r, "expected { needed }");
  return r.needed;
}

function rejects(buf: Buffer, pattern?: RegExp): void {
  assert.throws(
    () => parseProxyHeader(buf),
    (err: unknown) => {
      assert.ok(err instanceof ProxyProtocolError, `expected a ProxyProtocolError, got ${String(err)}`);
      assert.equal(err.code, "ERR_PROXY_PROTOCOL");
      if (pattern !== undefined) assert.match(err.message, pattern);
      return true;
    },
  );
}

/** Feeds every strict prefix of `header` and checks it asks for more, then checks the whole. */
function checkEveryPrefix(header: Buffer): void {
  for (let n = 0; n < header.length; n++) {
    const r: ProxyParseResult = parseProxyHeader(header.subarray(0, n));
    assert.ok("needed" in r, `prefix of ${n} bytes should be incomplete`);
    assert.ok(r.needed > n, `prefix of ${n} bytes: needed ${r.needed} should exceed ${n}`);
    assert.ok(r.needed <= header.length, `prefix of ${n} bytes: needed ${r.needed} overshoots ${header.length}`);
  }
  assert.equal(complete(header).consumed, header.length);
}

/** Node's own canonical form of an IPv6 address (libuv's inet_ntop). */
function nodeIPv6(text: string): string {
  return new SocketAddress({ address: text, family: "ipv6" }).address;
}

/** WHATWG URL's canonical form of an IPv6 address. */
function urlIPv6(text: string): string {
  return new URL(`http://[${text}]/`).hostname;
}

function wordsToFullHex(bytes: Uint8Array): string {
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(((bytes[i]! << 8) | bytes[i + 1]!).toString(16).padStart(4, "0"));
  return groups.join(":");
}

/** Bit-by-bit CRC32c, independent of the module's table-driven one. */
function crc32cBitwise(data: Uint8Array): number {
  let crc = 0xffffffff;
  for (const byte of data) {
    crc ^= byte;
    for (let k = 0; k < 8; k++) crc = (crc >>> 1) ^ (0x82f63b78 & -(crc & 1));
  }
  return (crc ^ 0xffffffff) >>> 0;
}

const PAYLOAD = Buffer.from("GET / HTTP/1.1\r\nHost: 192.168.0.11\r\n\r\n", "latin1");

// ---------------------------------------------------------------------------
// Constants and haproxy's literal examples

describe("constants and the specification's literal bytes", () => {
  it("exports the 12-byte v2 signature from doc/proxy-protocol.txt §2.2", () => {
    assert.deepEqual(PROXY_V2_SIGNATURE, hex("0D 0A 0D 0A 00 0D 0A 51 55 49 54 0A"));
    assert.equal(PROXY_V2_SIGNATURE.length, 12);
    assert.equal(PROXY_V1_MAX_LENGTH, 107);
    assert.equal(PROXY_V2_HEADER_LENGTH, 16);
  });

  it("recognises the documented 13-byte v2 marker (signature + \\x20) as an incomplete v2 header", () => {
    assert.equal(needed(hex("0D0A0D0A000D0A515549540A20")), 16);
  });

  it("is not affected by changes to the exported signature buffer", () => {
    const saved = Buffer.from(PROXY_V2_SIGNATURE);
    PROXY_V2_SIGNATURE.fill(0);
    try {
      assert.equal(complete(v2(0x20, 0x00)).header.command, "LOCAL");
    } finally {
      saved.copy(PROXY_V2_SIGNATURE);
    }
  });

  it("parses the spec's v1 example line before an HTTP request (§2.1)", () => {
    const line = "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n";
    const { header, consumed } = complete(Buffer.concat([Buffer.from(line, "latin1"), PAYLOAD]));
    assert.equal(consumed, line.length);
    assert.deepEqual(header, {
      version: 1,
      command: "PROXY",
      family: "TCP4",
      transport: "stream",
      source: ["192.168.0.1", 56324],
      destination: ["192.168.0.11", 443],
      tlvs: [],
    });
  });

  it("accepts each protocol byte the spec lists (\\x00 \\x11 \\x12 \\x21 \\x22 \\x31 \\x32)", () => {
    const cases: Array<[number, string, string, number]> = [
      [0x00, "UNKNOWN", "unspec", 0],
      [0x11, "TCP4", "stream", 12],
      [0x12, "TCP4", "dgram", 12],
      [0x21, "TCP6", "stream", 36],
      [0x22, "TCP6", "dgram", 36],
      [0x31, "UNIX", "stream", 216],
      [0x32, "UNIX", "dgram", 216],
    ];
    for (const [fam, family, transport, size] of cases) {
      const body = Buffer.alloc(size);
      if (size === 216) {
        unixPath("/a").copy(body, 0);
        unixPath("/b").copy(body, 108);
      }
      const { header, consumed } = complete(v2(0x21, fam, body));
      assert.equal(consumed, 16 + size);
      assert.equal(header.family, family);
      assert.equal(header.transport, transport);
    }
  });
});

// ---------------------------------------------------------------------------
// Version 1

describe("v1: valid headers", () => {
  it("parses TCP6 and returns IPv6 4-tuples", () => {
    const { header, consumed } = complete(Buffer.from("PROXY TCP6 2001:db8::1 ::1 1 65535\r\n"));
    assert.equal(consumed, 36);
    assert.deepEqual(header.source, ["2001:db8::1", 1, 0, 0]);
    assert.deepEqual(header.destination, ["::1", 65535, 0, 0]);
    assert.equal(header.family, "TCP6");
    assert.equal(header.transport, "stream");
  });

  it("normalises IPv6 text (uppercase, uncompressed, IPv4-mapped)", () => {
    const { header } = complete(
      Buffer.from("PROXY TCP6 2001:0DB8:0000:0000:0000:0000:0000:0001 0:0:0:0:0:FFFF:7F00:1 80 443\r\n"),
    );
    assert.deepEqual(header.source, ["2001:db8::1", 80, 0, 0]);
    assert.deepEqual(header.destination, ["::ffff:127.0.0.1", 443, 0, 0]);
    const mapped = complete(Buffer.from("PROXY TCP6 ::ffff:10.0.0.1 ::1 1 2\r\n")).header;
    assert.deepEqual(mapped.source, ["::ffff:10.0.0.1", 1, 0, 0]);
  });

  it("accepts the longest lines the spec lists: 56, 104 and 107 bytes", () => {
    const tcp4 = "PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n";
    const f = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
    const tcp6 = `PROXY TCP6 ${f} ${f} 65535 65535\r\n`;
    const unknown = `PROXY UNKNOWN ${f} ${f} 65535 65535\r\n`;
    assert.deepEqual([tcp4.length, tcp6.length, unknown.length], [56, 104, 107]);
    assert.equal(complete(Buffer.from(tcp4)).consumed, 56);
    assert.deepEqual(complete(Buffer.from(tcp6)).header.source, [f, 65535, 0, 0]);
    assert.equal(complete(Buffer.from(unknown)).consumed, 107);
  });

  it("accepts port 0 and the 0.0.0.0 address", () => {
    const { header } = complete(Buffer.from("PROXY TCP4 0.0.0.0 10.0.0.0 0 0\r\n"));
    assert.deepEqual(header.source, ["0.0.0.0", 0]);
    assert.deepEqual(header.destination, ["10.0.0.0", 0]);
  });

  it("parses UNKNOWN, short or followed by anything up to CRLF", () => {
    const unknown: ProxyHeader = {
      version: 1,
      command: "PROXY",
      family: "UNKNOWN",
      transport: "unspec",
      source: null,
      destination: null,
      tlvs: [],
    };
    assert.deepEqual(complete(Buffer.from("PROXY UNKNOWN\r\n")), { header: unknown, consumed: 15 });
    assert.deepEqual(complete(Buffer.from("PROXY UNKNOWN ::1 ::2 3 4\r\n")).header, unknown);
    assert.deepEqual(complete(Buffer.from("PROXY UNKNOWN  whatever, even  double spaces\r\n")).header, unknown);
    const binary = Buffer.concat([Buffer.from("PROXY UNKNOWN "), Buffer.from([0, 1, 0xff, 0x80]), Buffer.from("\r\n")]);
    assert.equal(complete(binary).consumed, binary.length);
  });

  it("stops exactly at the CRLF when payload follows", () => {
    const line = Buffer.from("PROXY TCP6 ::1 ::1 5 6\r\n");
    const { consumed } = complete(Buffer.concat([line, Buffer.from("\r\nPROXY TCP4 1.1.1.1 1.1.1.1 1 1\r\n")]));
    assert.equal(consumed, line.length);
    assert.equal(complete(Buffer.concat([Buffer.from("PROXY UNKNOWN\r\n"), PAYLOAD])).consumed, 15);
  });
});

describe("v1: malformed headers are rejected", () => {
  const bad: Array<[string, string | Buffer, RegExp?]> = [
    ["lowercase proxy", "proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", /Not a PROXY/],
    ["PROXY without space", "PROXY\r\n", /Not a PROXY/],
    ["tab after PROXY", "PROXY\tTCP4 1.2.3.4 5.6.7.8 1 2\r\n", /Not a PROXY/],
    ["double space after PROXY", "PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n", /unknown protocol/],
    ["double space after family", "PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", /empty/],
    ["double space between addresses", "PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", /empty/],
    ["double space between ports", "PROXY TCP4 1.2.3.4 5.6.7.8 1  2\r\n"],
    ["trailing space", "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", /trailing space/],
    ["tab separator", "PROXY TCP4 1.2.3.4\t5.6.7.8 1 2\r\n"],
    ["lowercase family", "PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n", /unknown protocol/],
    ["unknown family", "PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", /unknown protocol/],
    ["UDP4 family", "PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", /unknown protocol/],
    ["UNKNOWN glued to text", "PROXY UNKNOWNX\r\n", /unknown protocol/],
    ["lowercase unknown", "PROXY unknown\r\n", /unknown protocol/],
    ["empty family", "PROXY \r\n", /unknown protocol/],
    ["missing destination port", "PROXY TCP4 1.2.3.4 5.6.7.8 80\r\n", /needs/],
    ["family only", "PROXY TCP4\r\n", /needs/],
    ["extra field", "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", /more than four/],
    ["octet 256", "PROXY TCP4 256.1.1.1 5.6.7.8 1 2\r\n", /IPv4/],
    ["leading zero octet", "PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", /IPv4/],
    ["leading zero octet 00", "PROXY TCP4 1.2.3.00 5.6.7.8 1 2\r\n", /IPv4/],
    ["three octets", "PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", /IPv4/],
    ["five octets", "PROXY TCP4 1.2.3.4.5 5.6.7.8 1 2\r\n", /IPv4/],
    ["empty octet", "PROXY TCP4 1..3.4 5.6.7.8 1 2\r\n", /IPv4/],
    ["trailing dot", "PROXY TCP4 1.2.3.4. 5.6.7.8 1 2\r\n", /IPv4/],
    ["hex IPv4", "PROXY TCP4 0x7f.0.0.1 5.6.7.8 1 2\r\n", /IPv4/],
    ["host name", "PROXY TCP4 localhost 5.6.7.8 1 2\r\n", /IPv4/],
    ["TCP4 with IPv6 source", "PROXY TCP4 ::1 5.6.7.8 1 2\r\n", /IPv6 but the protocol is TCP4|not an IPv4/],
    ["TCP4 with IPv6 destination", "PROXY TCP4 1.2.3.4 ::1 1 2\r\n", /IPv6 but the protocol is TCP4/],
    ["TCP6 with IPv4 source", "PROXY TCP6 1.2.3.4 ::1 1 2\r\n", /IPv4 but the protocol is TCP6/],
    ["TCP6 with IPv4 destination", "PROXY TCP6 ::1 1.2.3.4 1 2\r\n", /IPv4 but the protocol is TCP6/],
    ["IPv6 with zone index", "PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", /IPv6/],
    ["IPv6 with nine groups", "PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n", /IPv6/],
    ["IPv6 with :::", "PROXY TCP6 :::1 ::1 1 2\r\n", /IPv6/],
    ["IPv6 with two ::", "PROXY TCP6 1::2::3 ::1 1 2\r\n", /IPv6/],
    ["IPv6 with a 5-digit group", "PROXY TCP6 12345::1 ::1 1 2\r\n", /IPv6/],
    ["IPv6 with a non-hex digit", "PROXY TCP6 2001:db8::g ::1 1 2\r\n", /IPv6/],
    ["IPv6 in brackets", "PROXY TCP6 [::1] ::1 1 2\r\n", /IPv6/],
    ["IPv6 with a leading-zero IPv4 tail", "PROXY TCP6 ::ffff:01.2.3.4 ::1 1 2\r\n", /IPv6/],
    ["port 65536", "PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", /port/],
    ["port 99999", "PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n", /port/],
    ["port 080", "PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n", /port/],
    ["port 00", "PROXY TCP4 1.2.3.4 5.6.7.8 1 00\r\n", /port/],
    ["port -1", "PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", /port/],
    ["port +80", "PROXY TCP4 1.2.3.4 5.6.7.8 +80 2\r\n", /port/],
    ["port 0x50", "PROXY TCP4 1.2.3.4 5.6.7.8 0x50 2\r\n", /port/],
    ["port 1e3", "PROXY TCP4 1.2.3.4 5.6.7.8 1e3 2\r\n", /port/],
    ["port 123456", "PROXY TCP4 1.2.3.4 5.6.7.8 123456 2\r\n", /port/],
    ["LF only", "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", /line feed without a carriage return/],
    ["LF before CR", "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n\r", /line feed/],
    ["LF only after UNKNOWN", "PROXY UNKNOWN\n", /line feed/],
    ["CR only", "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX", /carriage return without a line feed/],
    ["CR inside UNKNOWN's tail", "PROXY UNKNOWN a\rb\r\n", /carriage return/],
    ["CRCRLF", "PROXY UNKNOWN\r\r\n", /carriage return/],
    ["NUL in an address", Buffer.from("PROXY TCP4 1.2.3.4\x00 5.6.7.8 1 2\r\n", "latin1"), /IPv4/],
    ["non-ASCII digit", Buffer.from("PROXY TCP4 1.2.3.\u0664 5.6.7.8 1 2\r\n", "utf8"), /IPv4/],
  ];
  for (const [name, input, pattern] of bad) {
    it(name, () => rejects(typeof input === "string" ? Buffer.from(input, "latin1") : input, pattern));
  }

  it("rejects a line without CRLF within 107 bytes", () => {
    rejects(Buffer.from("PROXY UNKNOWN " + "x".repeat(93)), /no CRLF within the first 107 bytes/);
    rejects(Buffer.from("PROXY UNKNOWN " + "x".repeat(200) + "\r\n"), /no CRLF/);
  });

  it("rejects a 108-byte line (CR as the 107th byte)", () => {
    const line = "PROXY UNKNOWN " + "x".repeat(92) + "\r\n";
    assert.equal(line.length, 108);
    rejects(Buffer.from(line), /longer than 107/);
    rejects(Buffer.from(line.slice(0, 107)), /longer than 107/);
  });

  it("accepts the 107-byte line with the CR as the 106th byte", () => {
    const line = "PROXY UNKNOWN " + "x".repeat(91) + "\r\n";
    assert.equal(line.length, 107);
    assert.equal(complete(Buffer.from(line)).consumed, 107);
    assert.equal(needed(Buffer.from(line.slice(0, 106))), 107);
  });
});

describe("v1: incremental parsing and early rejection", () => {
  const lines = [
    "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
    "PROXY TCP6 2001:db8::1 ::ffff:127.0.0.1 0 65535\r\n",
    "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
    "PROXY UNKNOWN\r\n",
    "PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
  ];
  for (const line of lines) {
    it(`every prefix of ${JSON.stringify(line.slice(0, 24))}... asks for one more byte`, () => {
      const buf = Buffer.from(line);
      checkEveryPrefix(buf);
      for (let n = 0; n < buf.length; n++) assert.equal(needed(buf.subarray(0, n)), n + 1);
    });
  }

  it("rejects an HTTP request after its first byte", () => {
    rejects(Buffer.from("G"), /Not a PROXY protocol header/);
    rejects(Buffer.from("GET / HTTP/1.1\r\n\r\n"), /Not a PROXY protocol header/);
  });

  it("rejects a TLS ClientHello and SSH banner after their first byte", () => {
    rejects(hex("16"));
    rejects(Buffer.from("S"));
  });

  it("rejects at the first byte that leaves the PROXY prefix", () => {
    assert.equal(needed(Buffer.from("PROX")), 5);
    rejects(Buffer.from("PROXZ"));
    rejects(Buffer.from("PRO "));
    rejects(Buffer.from("PROXY\r"));
  });

  it("rejects a bad field before the CRLF arrives", () => {
    rejects(Buffer.from("PROXY TCP5"), /unknown protocol/);
    rejects(Buffer.from("PROXY UNKNOWNX"), /unknown protocol/);
    rejects(Buffer.from("PROXY X"), /unknown protocol/);
    rejects(Buffer.from("PROXY TCP4  "), /empty/);
    rejects(Buffer.from("PROXY TCP4 256"), /IPv4/);
    rejects(Buffer.from("PROXY TCP4 01"), /IPv4/);
    rejects(Buffer.from("PROXY TCP4 1:"), /IPv4/);
    rejects(Buffer.from("PROXY TCP4 1.2.3.4.5"), /IPv4/);
    rejects(Buffer.from("PROXY TCP6 ::1%"), /IPv6/);
    rejects(Buffer.from("PROXY TCP6 :::"), /IPv6/);
    rejects(Buffer.from("PROXY TCP6 1.2.3.4 "), /IPv4 but the protocol is TCP6/);
    rejects(Buffer.from("PROXY TCP4 1.2.3.4 5.6.7.8 080"), /port/);
    rejects(Buffer.from("PROXY TCP4 1.2.3.4 5.6.7.8 65536"), /port/);
    rejects(Buffer.from("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 "), /trailing space/);
    rejects(Buffer.from("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"), /line feed/);
  });
});

// ---------------------------------------------------------------------------
// Version 2

const ADDR4 = "C0A80001 C0A8000B DC04 01BB"; // 192.168.0.1 -> 192.168.0.11, 56324 -> 443
const ADDR6 =
  "20010DB8000000000000000000000001" + // 2001:db8::1
  "00000000000000000000FFFF7F000001" + // ::ffff:127.0.0.1
  "0050 FFFF"; // 80 -> 65535

describe("v2: valid headers", () => {
  it("parses TCP over IPv4 with TLVs, then stops at the payload (literal hex)", () => {
    const buf = hex(
      SIG_HEX +
        "21 11 0022" + // PROXY, TCP4, 34 bytes
        ADDR4 +
        "01 0002 6832" + // ALPN "h2"
        "02 000B 6578616D706C652E636F6D" + // AUTHORITY "example.com"
        "04 0000", // NOOP, empty
    );
    const { header, consumed } = complete(Buffer.concat([buf, PAYLOAD]));
    assert.equal(consumed, 16 + 34);
    assert.equal(consumed, buf.length);
    assert.deepEqual(header, {
      version: 2,
      command: "PROXY",
      family: "TCP4",
      transport: "stream",
      source: ["192.168.0.1", 56324],
      destination: ["192.168.0.11", 443],
      tlvs: [
        { type: ProxyTlvType.ALPN, value: Buffer.from("h2") },
        { type: ProxyTlvType.AUTHORITY, value: Buffer.from("example.com") },
        { type: ProxyTlvType.NOOP, value: Buffer.alloc(0) },
      ],
    });
  });

  it("returns TLV values that are copies of the input", () => {
    const buf = v2(0x21, 0x11, Buffer.concat([hex(ADDR4), tlv(0xe0, "abc")]));
    const { header } = complete(buf);
    buf.fill(0);
    assert.deepEqual(header.tlvs, [{ type: 0xe0, value: Buffer.from("abc") }]);
  });

  it("keeps unknown, custom, experimental and future TLV types", () => {
    const types = [0x00, 0x06, 0x20, 0x30, 0xe0, 0xef, 0xf0, 0xf7, 0xf8, 0xff];
    const body = Buffer.concat([hex(ADDR4), ...types.map((t) => tlv(t, Buffer.from([t])))]);
    const { header } = complete(v2(0x21, 0x11, body));
    assert.deepEqual(
      header.tlvs,
      types.map((t) => ({ type: t, value: Buffer.from([t]) })),
    );
  });

  it("parses UDP over IPv4 as family TCP4 with transport dgram", () => {
    const { header } = complete(v2(0x21, 0x12, ADDR4));
    assert.equal(header.family, "TCP4");
    assert.equal(header.transport, "dgram");
    assert.deepEqual(header.source, ["192.168.0.1", 56324]);
  });

  it("parses TCP and UDP over IPv6 into canonical text", () => {
    for (const [fam, transport] of [
      [0x21, "stream"],
      [0x22, "dgram"],
    ] as const) {
      const { header, consumed } = complete(v2(0x21, fam, ADDR6));
      assert.equal(consumed, 52);
      assert.equal(header.family, "TCP6");
      assert.equal(header.transport, transport);
      assert.deepEqual(header.source, ["2001:db8::1", 80, 0, 0]);
      assert.deepEqual(header.destination, ["::ffff:127.0.0.1", 65535, 0, 0]);
    }
  });

  it("formats IPv6 like Node: ::, ::1, longest run, first of equal runs, no single-zero compression", () => {
    const cases: Array<[string, string]> = [
      ["00000000000000000000000000000000", "::"],
      ["00000000000000000000000000000001", "::1"],
      ["00010000000000000000000000000000", "1::"],
      ["00010000000000020000000000000003", "1:0:0:2::3"],
      ["00010000000000020000000000030004", "1::2:0:0:3:4"],
      ["20010DB8000000010001000100010001", "2001:db8:0:1:1:1:1:1"],
      ["FE800000000000000202B3FFFE1E8329", "fe80::202:b3ff:fe1e:8329"],
      ["00000000000000000000000001020304", "::1.2.3.4"],
      ["00000000000000000000FFFF00000000", "::ffff:0.0.0.0"],
      ["0064FF9B000000000000000001020304", "64:ff9b::102:304"],
    ];
    for (const [bytes, text] of cases) {
      const body = Buffer.concat([hex(bytes), hex(bytes), hex("0001 0002")]);
      const { header } = complete(v2(0x21, 0x21, body));
      assert.deepEqual(header.source, [text, 1, 0, 0], bytes);
      assert.equal(text, nodeIPv6(wordsToFullHex(hex(bytes))));
    }
  });

  it("parses UNIX stream and datagram addresses, NUL-trimmed", () => {
    const body = Buffer.concat([unixPath("/var/run/client.sock"), unixPath("/var/run/haproxy.sock")]);
    const stream = complete(v2(0x21, 0x31, body)).header;
    assert.equal(stream.family, "UNIX");
    assert.equal(stream.transport, "stream");
    assert.equal(stream.source, "/var/run/client.sock");
    assert.equal(stream.destination, "/var/run/haproxy.sock");
    assert.equal(complete(v2(0x21, 0x32, body)).header.transport, "dgram");
  });

  it("decodes unnamed, abstract, 108-byte and UTF-8 UNIX paths", () => {
    const full = "/" + "p".repeat(107);
    const body = Buffer.concat([Buffer.alloc(108), unixPath(full)]);
    const h = complete(v2(0x21, 0x31, body)).header;
    assert.equal(h.source, "");
    assert.equal(h.destination, full);
    const abstract = Buffer.concat([unixPath("\0abstract"), unixPath("/tmp/\u00e9t\u00e9.sock")]);
    const a = complete(v2(0x21, 0x31, abstract)).header;
    assert.equal(a.source, "\0abstract");
    assert.equal(a.destination, "/tmp/\u00e9t\u00e9.sock");
  });

  it("ignores bytes after the NUL that ends a UNIX path", () => {
    const src = unixPath("/a");
    src.write("garbage", 10);
    const { header } = complete(v2(0x21, 0x31, Buffer.concat([src, unixPath("/b")])));
    assert.equal(header.source, "/a");
  });

  it("parses UNIX addresses followed by TLVs", () => {
    const body = Buffer.concat([unixPath("/a"), unixPath("/b"), tlv(ProxyTlvType.NETNS, "blue")]);
    const { header, consumed } = complete(v2(0x21, 0x31, body));
    assert.equal(consumed, 16 + 216 + 7);
    assert.deepEqual(header.tlvs, [{ type: ProxyTlvType.NETNS, value: Buffer.from("blue") }]);
  });

  it("parses PROXY with AF_UNSPEC: family UNKNOWN, no addresses, TLVs from byte 17", () => {
    const buf = hex(SIG_HEX + "21 00 0008" + "05 0005 6964313233");
    const { header, consumed } = complete(Buffer.concat([buf, PAYLOAD]));
    assert.equal(consumed, 24);
    assert.deepEqual(header, {
      version: 2,
      command: "PROXY",
      family: "UNKNOWN",
      transport: "unspec",
      source: null,
      destination: null,
      tlvs: [{ type: ProxyTlvType.UNIQUE_ID, value: Buffer.from("id123") }],
    });
    assert.equal(complete(v2(0x21, 0x01)).header.transport, "stream");
    assert.equal(complete(v2(0x21, 0x02)).header.transport, "dgram");
  });

  it("ignores addresses when the transport is unspecified but still skips the family's block", () => {
    const { header, consumed } = complete(v2(0x21, 0x10, Buffer.concat([hex(ADDR4), tlv(0x01, "h2")])));
    assert.equal(consumed, 16 + 12 + 5);
    assert.equal(header.family, "TCP4");
    assert.equal(header.transport, "unspec");
    assert.equal(header.source, null);
    assert.equal(header.destination, null);
    assert.deepEqual(header.tlvs, [{ type: 1, value: Buffer.from("h2") }]);
    assert.equal(complete(v2(0x21, 0x20, Buffer.alloc(36))).header.source, null);
    assert.equal(complete(v2(0x21, 0x30, Buffer.alloc(216))).header.destination, null);
  });

  it("parses LOCAL with no addresses (literal hex)", () => {
    const { header, consumed } = complete(hex(SIG_HEX + "20 00 0000"));
    assert.equal(consumed, 16);
    assert.deepEqual(header, {
      version: 2,
      command: "LOCAL",
      family: "UNKNOWN",
      transport: "unspec",
      source: null,
      destination: null,
      tlvs: [],
    });
  });

  it("parses LOCAL with TLVs and AF_UNSPEC", () => {
    const { header, consumed } = complete(Buffer.concat([v2(0x20, 0x00, tlv(0x04, "pad")), PAYLOAD]));
    assert.equal(consumed, 22);
    assert.deepEqual(header.tlvs, [{ type: 4, value: Buffer.from("pad") }]);
  });

  it("parses LOCAL with an address block: addresses ignored, the whole length consumed", () => {
    for (const [fam, block] of [
      [0x11, hex(ADDR4)],
      [0x21, hex(ADDR6)],
      [0x31, Buffer.concat([unixPath("/a"), unixPath("/b")])],
    ] as const) {
      const body = Buffer.concat([block, tlv(0x02, "example.com")]);
      const { header, consumed } = complete(Buffer.concat([v2(0x20, fam, body), PAYLOAD]));
      assert.equal(consumed, 16 + body.length);
      assert.equal(header.command, "LOCAL");
      assert.equal(header.source, null);
      assert.equal(header.destination, null);
      assert.deepEqual(header.tlvs, [{ type: 2, value: Buffer.from("example.com") }]);
    }
  });

  it("accepts LOCAL with a family but length 0", () => {
    for (const fam of [0x11, 0x12, 0x21, 0x22, 0x31, 0x32]) {
      const { header, consumed } = complete(v2(0x20, fam));
      assert.equal(consumed, 16);
      assert.equal(header.source, null);
    }
  });

  it("accepts the largest length the 16-bit field allows (65535)", () => {
    const body = Buffer.concat([hex(ADDR4), tlv(0x04, Buffer.alloc(65535 - 12 - 3))]);
    assert.equal(body.length, 65535);
    const buf = v2(0x21, 0x11, body);
    assert.equal(needed(buf.subarray(0, 16)), 65551);
    const { header, consumed } = complete(Buffer.concat([buf, PAYLOAD]));
    assert.equal(consumed, 65551);
    assert.equal(header.tlvs[0]!.value.length, 65520);
  });

  it("accepts a Uint8Array as well as a Buffer", () => {
    const buf = v2(0x21, 0x11, ADDR4);
    const copy = new Uint8Array(buf);
    assert.ok("header" in parseProxyHeader(copy as Buffer));
  });
});

describe("v2: CRC32C and UNIQUE_ID TLVs", () => {
  it("the test's CRC32c helper matches the standard check value", () => {
    assert.equal(crc32cBitwise(Buffer.from("123456789")), 0xe3069283);
  });

  function withCrc(): Buffer {
    const buf = v2(0x21, 0x11, Buffer.concat([hex(ADDR4), tlv(0x01, "h2"), tlv(0x03, Buffer.alloc(4))]));
    buf.writeUInt32BE(crc32cBitwise(buf), buf.length - 4);
    return buf;
  }

  it("verifies a correct checksum", () => {
    const buf = withCrc();
    const { header } = complete(buf);
    assert.deepEqual(header.tlvs[1], { type: 3, value: buf.subarray(buf.length - 4) });
  });

  it("rejects a header whose bytes do not match the checksum", () => {
    const buf = withCrc();
    buf[17] ^= 1;
    rejects(buf, /CRC32C/);
    const crc = withCrc();
    crc[crc.length - 1] ^= 0x80;
    rejects(crc, /CRC32C/);
  });

  it("verifies a LOCAL header's checksum: the spec's rule has no exception for LOCAL, and HAProxy 3.0+ refuses a wrong one", () => {
    const local = encodeProxyV2({ command: "LOCAL", tlvs: [{ type: ProxyTlvType.UNIQUE_ID, value: Buffer.from("hc-1") }], checksum: true });
    assert.equal(complete(local).header.tlvs.length, 2);
    const wrongCrc = Buffer.from(local);
    wrongCrc[wrongCrc.length - 1] ^= 1;
    rejects(wrongCrc, /CRC32C/);
    // A LOCAL with an address block: the checksum follows the block, and covers it.
    const withBlock = v2(0x20, 0x11, Buffer.concat([hex(ADDR4), tlv(0x03, Buffer.alloc(4))]));
    withBlock.writeUInt32BE(crc32cBitwise(withBlock), withBlock.length - 4);
    assert.equal(complete(withBlock).header.command, "LOCAL");
    withBlock[17] ^= 1;
    rejects(withBlock, /CRC32C/);
  });

  it("rejects a CRC32C TLV that is not 4 bytes, or a second one", () => {
    rejects(v2(0x21, 0x11, Buffer.concat([hex(ADDR4), tlv(0x03, Buffer.alloc(3))])), /4/);
    rejects(v2(0x21, 0x11, Buffer.concat([hex(ADDR4), tlv(0x03, Buffer.alloc(8))])), /4/);
    const two = v2(0x21, 0x00, Buffer.concat([tlv(0x03, Buffer.alloc(4)), tlv(0x03, Buffer.alloc(4))]));
    rejects(two, /more than one CRC32C/);
  });

  it("limits UNIQUE_ID to 128 bytes", () => {
    assert.equal(complete(v2(0x21, 0x00, tlv(0x05, Buffer.alloc(128, 1)))).header.tlvs[0]!.value.length, 128);
    rejects(v2(0x21, 0x00, tlv(0x05, Buffer.alloc(129, 1))), /UNIQUE_ID/);
  });
});

/** A LOCAL header whose protocol block was discarded: the bytes it consumed. */
function discardedLocal(data: Buffer): number {
  const result = parseProxyHeader(data);
  assert.ok("header" in result, "a header");
  assert.deepEqual(
    { ...result.header },
    { version: 2, command: "LOCAL", family: "UNKNOWN", transport: "unspec", source: null, destination: null, tlvs: [] },
  );
  return result.consumed;
}

describe("v2: malformed headers are rejected", () => {
  it("rejects versions other than 2, as soon as byte 13 arrives", () => {
    for (const verCmd of [0x01, 0x11, 0x31, 0xf1, 0x10, 0x00]) {
      rejects(hex(SIG_HEX + verCmd.toString(16).padStart(2, "0")), /version/);
      rejects(v2(verCmd, 0x11, ADDR4), /version/);
    }
  });

  it("rejects commands other than LOCAL and PROXY, as soon as byte 13 arrives", () => {
    for (const verCmd of [0x22, 0x23, 0x2f]) {
      rejects(hex(SIG_HEX + verCmd.toString(16)), /command/);
      rejects(v2(verCmd, 0x11, ADDR4), /command/);
    }
  });

  it("rejects unknown families and transports for PROXY, as soon as byte 14 arrives; LOCAL ignores its family (HAProxy's spec)", () => {
    for (const fam of [0x40, 0x41, 0xf1, 0x13, 0x03, 0x1f, 0xff]) {
      const pattern = fam >> 4 > 3 ? /address family/ : /transport/;
      rejects(hex(SIG_HEX + "21" + fam.toString(16).padStart(2, "0")), pattern);
      rejects(v2(0x21, fam, Buffer.alloc(216)), pattern);
      assert.deepEqual(discardedLocal(v2(0x20, fam)), 16);
    }
  });

  it("rejects a length shorter than the family's address block, before the body arrives", () => {
    const cases: Array<[number, number]> = [
      [0x11, 11],
      [0x12, 0],
      [0x21, 35],
      [0x22, 12],
      [0x31, 215],
      [0x32, 108],
    ];
    for (const [fam, length] of cases) {
      const full = v2(0x21, fam, Buffer.alloc(length));
      rejects(full.subarray(0, 16), /shorter than/);
      rejects(full, /shorter than/);
    }
  });

  it("accepts LOCAL with a partial address block or malformed TLVs: its protocol block is discarded (HAProxy's spec)", () => {
    assert.equal(discardedLocal(v2(0x20, 0x11, Buffer.alloc(5))), 21);
    assert.equal(discardedLocal(v2(0x20, 0x21, tlv(0x04, Buffer.alloc(10)))), 29);
    assert.equal(discardedLocal(v2(0x20, 0x00, hex("04 0001"))), 19);
    // Only the announced length is taken: the connection's bytes follow.
    assert.equal(discardedLocal(Buffer.concat([v2(0x20, 0x55, Buffer.alloc(3)), PAYLOAD])), 19);
  });

  it("accepts PROXY with UNSPEC in one nibble only (0x01, 0x02, 0x10, 0x20, 0x30) without addresses: a block that does not parse is discarded, a wrong checksum refused", () => {
    const discarded = { version: 2, command: "PROXY", family: "UNKNOWN", transport: "unspec", source: null, destination: null, tlvs: [] };
    const cases: Array<[number, Buffer]> = [
      [0x10, Buffer.alloc(11)],
      [0x10, Buffer.alloc(0)],
      [0x20, Buffer.alloc(12)],
      [0x30, Buffer.alloc(5)],
      [0x01, hex("04 0001")],
      [0x02, hex("00")],
    ];
    for (const [fam, body] of cases) {
      const full = v2(0x21, fam, body);
      if (body.length > 0) assert.equal(needed(full.subarray(0, full.length - 1)), full.length, `0x${fam.toString(16)} waits for its whole block`);
      const { header, consumed } = complete(Buffer.concat([full, PAYLOAD]));
      assert.equal(consumed, full.length);
      assert.deepEqual({ ...header }, discarded, `0x${fam.toString(16)}`);
    }
    const withCrc = v2(0x21, 0x01, tlv(0x03, Buffer.alloc(4)));
    withCrc.writeUInt32BE(crc32cBitwise(withCrc), withCrc.length - 4);
    assert.equal(complete(withCrc).header.tlvs.length, 1);
    withCrc[withCrc.length - 1] ^= 1;
    rejects(withCrc, /CRC32C/);
  });

  it("rejects a TLV that runs past the end of the header", () => {
    const overrun = Buffer.concat([hex(ADDR4), hex("01 000A 6832")]); // announces 10, has 2
    rejects(v2(0x21, 0x11, overrun), /announces 10 byte/);
    // The next connection bytes must not be mistaken for the rest of the TLV.
    rejects(Buffer.concat([v2(0x21, 0x11, overrun), PAYLOAD]), /announces 10 byte/);
  });

  it("rejects a truncated TLV header (1 or 2 bytes left)", () => {
    rejects(v2(0x21, 0x11, Buffer.concat([hex(ADDR4), hex("01")])), /too few for a TLV/);
    rejects(v2(0x21, 0x11, Buffer.concat([hex(ADDR4), tlv(1, "x"), hex("0100")])), /too few for a TLV/);
    rejects(v2(0x21, 0x00, hex("00")), /too few/);
  });

  it("rejects a UNIX path that is not UTF-8", () => {
    const src = unixPath("/tmp/");
    src[5] = 0xff;
    rejects(v2(0x21, 0x31, Buffer.concat([src, unixPath("/b")])), /UTF-8/);
  });

  it("rejects a wrong signature at its first differing byte", () => {
    rejects(hex("0D0A0D0A01"));
    rejects(hex("0D0D"));
    rejects(hex("0A"));
    rejects(hex("0D0A0D0A000D0A515549540B"));
    assert.equal(needed(hex("0D0A0D0A000D0A5155")), 16);
  });
});

describe("parseProxySsl: the SSL TLV's fields and sub-TLVs", () => {
  /** An SSL TLV value: client byte, verify field, sub-TLVs. */
  const sslValue = (client: number, verify: number, subs: Buffer[]): Buffer => {
    const head = Buffer.alloc(5);
    head[0] = client;
    head.writeUInt32BE(verify, 1);
    return Buffer.concat([head, ...subs]);
  };
  const der = Buffer.from([0x30, 0x82, 0x01, 0x0a, 0xde, 0xad]);

  it("reads a header as HAProxy's send-proxy-v2-ssl-cn sends it, through encodeProxyV2 and parseProxyHeader", () => {
    const value = sslValue(0x07, 0, [
      tlv(ProxyTlvType.SSL_VERSION, "TLSv1.3"),
      tlv(ProxyTlvType.SSL_CN, "Zoë client"),
      tlv(ProxyTlvType.SSL_CIPHER, "TLS_AES_256_GCM_SHA384"),
      tlv(ProxyTlvType.SSL_SIG_ALG, "SHA256"),
      tlv(ProxyTlvType.SSL_KEY_ALG, "EC256"),
      tlv(ProxyTlvType.SSL_GROUP, "X25519"),
      tlv(ProxyTlvType.SSL_SIG_SCHEME, "ecdsa_secp256r1_sha256"),
      tlv(ProxyTlvType.SSL_CLIENT_CERT, der),
      tlv(0x2f, "future"),
    ]);
    const wire = encodeProxyV2({ command: "PROXY", family: "TCP4", source: ["203.0.113.5", 4000], destination: ["10.0.0.1", 443], tlvs: [{ type: ProxyTlvType.SSL, value }], checksum: true });
    const header = complete(wire).header;
    const ssl = parseProxySsl(header.tlvs.find((t) => t.type === ProxyTlvType.SSL)!.value);
    assert.deepEqual(
      { client: ssl.client, tls: ssl.tls, conn: ssl.certOnConnection, sess: ssl.certInSession, verify: ssl.verify, verified: ssl.verified },
      { client: 7, tls: true, conn: true, sess: true, verify: 0, verified: true },
    );
    assert.deepEqual(
      [ssl.version, ssl.cn, ssl.cipher, ssl.sigAlg, ssl.keyAlg, ssl.group, ssl.sigScheme],
      ["TLSv1.3", "Zoë client", "TLS_AES_256_GCM_SHA384", "SHA256", "EC256", "X25519", "ecdsa_secp256r1_sha256"],
    );
    assert.deepEqual(ssl.clientCert, der);
    assert.deepEqual(ssl.tlvs.map((t) => t.type), [0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28, 0x2f], "every sub-TLV, unknown ones too, in order");
    assert.equal(ssl.tlvs.at(-1)!.value.toString(), "future");
  });

  it("a client without a certificate, or one that failed verification: flags and verify as sent, absent sub-TLVs null", () => {
    const plain = parseProxySsl(sslValue(0x01, 1, []));
    assert.deepEqual([plain.tls, plain.certOnConnection, plain.certInSession, plain.verified], [true, false, false, false]);
    assert.deepEqual([plain.version, plain.cn, plain.clientCert, plain.tlvs], [null, null, null, []]);
    const failed = parseProxySsl(sslValue(0x03, 0x15, [tlv(ProxyTlvType.SSL_CN, "mallory")]));
    assert.equal(failed.verify, 0x15);
    assert.equal(failed.verified, false);
    assert.equal(failed.cn, "mallory");
  });

  it("reads a value given as a view into a larger buffer, and copies what it returns", () => {
    const value = sslValue(0x01, 0, [tlv(ProxyTlvType.SSL_VERSION, "TLSv1.2")]);
    const big = Buffer.concat([Buffer.from("xxxx"), value, Buffer.from("yy")]);
    const ssl = parseProxySsl(big.subarray(4, 4 + value.length));
    assert.equal(ssl.version, "TLSv1.2");
    big.fill(0);
    assert.equal(ssl.tlvs[0]!.value.toString(), "TLSv1.2");
  });

  it("refuses a malformed value with ProxyProtocolError, and what is no buffer with a TypeError", () => {
    assert.throws(() => parseProxySsl(Buffer.from([1, 0, 0, 0])), (e: unknown) => e instanceof ProxyProtocolError && /fewer than its 5-byte/.test(e.message));
    assert.throws(() => parseProxySsl(sslValue(1, 0, [hex("21 0009 544c53")])), (e: unknown) => e instanceof ProxyProtocolError && /announces 9 byte/.test(e.message));
    assert.throws(() => parseProxySsl(sslValue(1, 0, [hex("21 00")])), (e: unknown) => e instanceof ProxyProtocolError && /too few for a TLV/.test(e.message));
    assert.throws(() => parseProxySsl("x" as unknown as Buffer), TypeError);
  });
});

describe("v2: incremental parsing", () => {
  const headers: Array<[string, Buffer]> = [
    ["TCP4 with TLVs", v2(0x21, 0x11, Buffer.concat([hex(ADDR4), tlv(1, "h2"), tlv(2, "example.com")]))],
    ["TCP6", v2(0x21, 0x21, ADDR6)],
    ["UNIX", v2(0x21, 0x31, Buffer.concat([unixPath("/a"), unixPath("/b")]))],
    ["UNSPEC with a TLV", v2(0x21, 0x00, tlv(4, "pad"))],
    ["LOCAL", v2(0x20, 0x00)],
  ];
  for (const [name, header] of headers) {
    it(`every prefix of ${name} asks for more, never an error`, () => {
      checkEveryPrefix(header);
      for (let n = 0; n < header.length; n++) {
        const want = n === 0 ? 1 : n < 16 ? 16 : header.length;
        assert.equal(needed(header.subarray(0, n)), want, `prefix ${n}`);
      }
    });
  }

  it("needs one byte when nothing has arrived", () => {
    assert.deepEqual(parseProxyHeader(Buffer.alloc(0)), { needed: 1 });
  });

  it("rejects non-Buffer input with a TypeError", () => {
    assert.throws(() => parseProxyHeader("PROXY UNKNOWN\r\n" as unknown as Buffer), TypeError);
  });
});

// ---------------------------------------------------------------------------
// Encoders

describe("encodeProxyV1", () => {
  it("writes TCP4, TCP6 and UNKNOWN lines", () => {
    assert.equal(
      encodeProxyV1({ family: "TCP4", source: ["192.168.0.1", 56324], destination: ["192.168.0.11", 443] }).toString(),
      "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
    );
    assert.equal(
      encodeProxyV1({
        family: "TCP6",
        source: ["2001:0DB8:0:0:0:0:0:1", 1, 0, 3],
        destination: ["::ffff:127.0.0.1", 2],
      }).toString(),
      "PROXY TCP6 2001:db8::1 ::ffff:7f00:1 1 2\r\n",
    );
    assert.equal(encodeProxyV1({ family: "UNKNOWN" }).toString(), "PROXY UNKNOWN\r\n");
  });

  it("drops an IPv6 zone, as scopeid: it names an interface of the sending host (a link-local client's remoteAddress has one)", () => {
    assert.equal(
      encodeProxyV1({ family: "TCP6", source: ["fe80::1%eth0", 1, 0, 2], destination: ["fe80::2%2", 2] }).toString(),
      "PROXY TCP6 fe80::1 fe80::2 1 2\r\n",
    );
    const parsed = parseProxyHeader(encodeProxyV2({ command: "PROXY", source: ["fe80::1%eth0", 1, 0, 2], destination: ["::1", 2, 0, 0] }));
    assert.ok("header" in parsed);
    assert.deepEqual(parsed.header.source, ["fe80::1", 1, 0, 0]);
  });

  it("rejects endpoints that do not fit the family", () => {
    assert.throws(() => encodeProxyV1({ family: "TCP4", source: ["::1", 1], destination: ["1.2.3.4", 2] }), TypeError);
    assert.throws(() => encodeProxyV1({ family: "TCP6", source: ["1.2.3.4", 1], destination: ["::1", 2] }), TypeError);
    assert.throws(() => encodeProxyV1({ family: "TCP6", source: ["fe80::1%", 1], destination: ["::1", 2] }), TypeError);
    assert.throws(() => encodeProxyV1({ family: "TCP4", source: ["01.2.3.4", 1], destination: ["1.2.3.4", 2] }), TypeError);
    assert.throws(() => encodeProxyV1({ family: "TCP4", destination: ["1.2.3.4", 2] }), TypeError);
    assert.throws(() => encodeProxyV1({ family: "TCP4", source: ["1.2.3.4", 65536], destination: ["1.2.3.4", 2] }), RangeError);
    assert.throws(() => encodeProxyV1({ family: "TCP4", source: ["1.2.3.4", -1], destination: ["1.2.3.4", 2] }), RangeError);
    assert.throws(() => encodeProxyV1({ family: "TCP4", source: ["1.2.3.4", 1.5], destination: ["1.2.3.4", 2] }), RangeError);
    assert.throws(() => encodeProxyV1({ family: "UDP4" as "TCP4" }), TypeError);
    // A port of the wrong type is a TypeError (SPEC §10), not a RangeError.
    assert.throws(() => encodeProxyV1({ family: "TCP4", source: ["1.2.3.4", "1" as unknown as number], destination: ["1.2.3.4", 2] }), {
      name: "TypeError",
      code: "ERR_INVALID_ARG_TYPE",
    });
  });
});

describe("encodeProxyV2", () => {
  it("writes TCP4 with TLVs byte for byte", () => {
    const buf = encodeProxyV2({
      command: "PROXY",
      source: ["192.168.0.1", 56324],
      destination: ["192.168.0.11", 443],
      tlvs: [{ type: ProxyTlvType.ALPN, value: Buffer.from("h2") }],
    });
    assert.deepEqual(buf, hex(SIG_HEX + "21 11 0011" + ADDR4 + "01 0002 6832"));
  });

  it("writes TCP6 and UDP byte for byte", () => {
    const buf = encodeProxyV2({
      command: "PROXY",
      family: "TCP6",
      transport: "dgram",
      source: ["2001:db8::1", 80, 0, 0],
      destination: ["::ffff:127.0.0.1", 65535, 0, 0],
    });
    assert.deepEqual(buf, hex(SIG_HEX + "21 22 0024" + ADDR6));
  });

  it("writes LOCAL as AF_UNSPEC with no address block", () => {
    assert.deepEqual(encodeProxyV2({ command: "LOCAL" }), hex(SIG_HEX + "20 00 0000"));
    assert.deepEqual(encodeProxyV2({ command: "LOCAL", source: ["1.2.3.4", 1] }), hex(SIG_HEX + "20 00 0000"));
  });

  it("refuses a family and transport the specification does not pair (UNSPEC in one nibble only)", () => {
    const cases: Array<[ProxyV2Fields, string]> = [
      [{ command: "PROXY", family: "TCP4", transport: "unspec", source: ["1.2.3.4", 1], destination: ["5.6.7.8", 2] }, "0x10"],
      [{ command: "PROXY", source: ["2001:db8::1", 1, 0, 0], destination: ["::1", 2, 0, 0], transport: "unspec" }, "0x20"],
      [{ command: "PROXY", family: "UNIX", transport: "unspec", source: "/a", destination: "/b" }, "0x30"],
      [{ command: "PROXY", family: "UNKNOWN", transport: "stream" }, "0x01"],
      [{ command: "LOCAL", transport: "dgram" }, "0x02"],
      [{ command: "LOCAL", family: "TCP4", transport: "unspec", source: ["1.2.3.4", 1], destination: ["5.6.7.8", 2] }, "0x10"],
    ];
    for (const [fields, byte] of cases) {
      assert.throws(() => encodeProxyV2(fields), (err: Error & { code?: string }) => {
        assert.ok(err instanceof TypeError);
        assert.equal(err.code, "ERR_INVALID_ARG_VALUE");
        assert.ok(err.message.includes(`(byte ${byte})`), err.message);
        return true;
      });
    }
    assert.deepEqual(encodeProxyV2({ command: "PROXY", family: "UNKNOWN", transport: "unspec" }), hex(SIG_HEX + "21 00 0000"));
  });

  it("writes UNIX paths padded to 108 bytes", () => {
    const buf = encodeProxyV2({ command: "PROXY", source: "/a", destination: "\0b" });
    assert.deepEqual(buf, v2(0x21, 0x31, Buffer.concat([unixPath("/a"), unixPath("\0b")])));
  });

  it("appends a valid CRC32C TLV on request", () => {
    const buf = encodeProxyV2({ command: "PROXY", source: ["1.2.3.4", 1], destination: ["5.6.7.8", 2], checksum: true });
    const copy = Buffer.from(buf);
    copy.fill(0, copy.length - 4);
    assert.equal(buf.readUInt32BE(buf.length - 4), crc32cBitwise(copy));
    assert.equal(complete(buf).header.tlvs[0]!.type, ProxyTlvType.CRC32C);
  });

  it("rejects what it cannot encode", () => {
    const ok = { command: "PROXY" as const, source: ["1.2.3.4", 1] as [string, number], destination: ["5.6.7.8", 2] as [string, number] };
    assert.throws(() => encodeProxyV2({ ...ok, command: "HEALTH" as "PROXY" }), TypeError);
    assert.throws(() => encodeProxyV2({ ...ok, family: "TCP6" }), TypeError);
    assert.throws(() => encodeProxyV2({ ...ok, destination: ["::1", 2] }), TypeError);
    assert.throws(() => encodeProxyV2({ ...ok, destination: undefined }), TypeError);
    assert.throws(() => encodeProxyV2({ ...ok, source: 4040 }), TypeError);
    assert.throws(() => encodeProxyV2({ ...ok, source: ["localhost", 1] }), TypeError);
    assert.throws(() => encodeProxyV2({ ...ok, family: "UNKNOWN" }), TypeError);
    assert.throws(() => encodeProxyV2({ ...ok, source: ["1.2.3.4", 70000] }), RangeError);
    assert.throws(() => encodeProxyV2({ ...ok, tlvs: [{ type: 256, value: Buffer.alloc(0) }] }), RangeError);
    assert.throws(() => encodeProxyV2({ ...ok, tlvs: [{ type: 1.5, value: Buffer.alloc(0) }] }), RangeError);
    assert.throws(() => encodeProxyV2({ ...ok, source: ["1.2.3.4", null as unknown as number] }), { name: "TypeError", code: "ERR_INVALID_ARG_TYPE" });
    assert.throws(() => encodeProxyV2({ ...ok, tlvs: [{ type: "4" as unknown as number, value: Buffer.alloc(0) }] }), { name: "TypeError", code: "ERR_INVALID_ARG_TYPE" });
    assert.throws(() => encodeProxyV2({ ...ok, tlvs: [{ type: 4, value: Buffer.alloc(65536) }] }), RangeError);
    assert.throws(() => encodeProxyV2({ ...ok, tlvs: [{ type: 4, value: Buffer.alloc(65535 - 14) }] }), RangeError);
    assert.throws(() => encodeProxyV2({ ...ok, tlvs: [{ type: 3, value: Buffer.alloc(4) }], checksum: true }), TypeError);
    assert.throws(() => encodeProxyV2({ command: "PROXY", source: "/" + "x".repeat(108), destination: "/b" }), RangeError);
    assert.throws(() => encodeProxyV2({ command: "PROXY", source: "/a\0b", destination: "/b" }), TypeError);
    assert.throws(() => encodeProxyV2({ command: "PROXY", source: "\0a\0", destination: "/b" }), TypeError);
    assert.throws(() => encodeProxyV2({ command: "PROXY", family: "UNIX", source: "/a", destination: ["1.2.3.4", 1] }), TypeError);
  });

  it("refuses the TLVs every receiver refuses: UNIQUE_ID over 128 bytes, a CRC32C not of 4 bytes, two CRC32Cs", () => {
    const ok = { command: "PROXY" as const, source: ["1.2.3.4", 1] as [string, number], destination: ["5.6.7.8", 2] as [string, number] };
    // Each was encoded, and the parser (as the specification asks) then refused the header.
    assert.throws(() => encodeProxyV2({ ...ok, tlvs: [{ type: ProxyTlvType.UNIQUE_ID, value: Buffer.alloc(129) }] }), RangeError);
    assert.throws(() => encodeProxyV2({ command: "LOCAL", tlvs: [{ type: ProxyTlvType.UNIQUE_ID, value: Buffer.alloc(200) }] }), RangeError);
    for (const size of [0, 3, 5]) {
      assert.throws(() => encodeProxyV2({ ...ok, tlvs: [{ type: ProxyTlvType.CRC32C, value: Buffer.alloc(size) }] }), RangeError);
    }
    const crc = { type: ProxyTlvType.CRC32C, value: Buffer.alloc(4) };
    assert.throws(() => encodeProxyV2({ ...ok, tlvs: [crc, crc] }), { name: "TypeError", code: "ERR_INVALID_ARG_VALUE" });
    const id = Buffer.alloc(128, 0x41);
    const parsed = parseProxyHeader(encodeProxyV2({ ...ok, tlvs: [{ type: ProxyTlvType.UNIQUE_ID, value: id }], checksum: true }));
    assert.ok("header" in parsed);
    assert.deepEqual(parsed.header.tlvs[0], { type: ProxyTlvType.UNIQUE_ID, value: id });
  });

  it("accepts exactly 65535 bytes after the fixed part", () => {
    const buf = encodeProxyV2({
      command: "PROXY",
      source: ["1.2.3.4", 1],
      destination: ["5.6.7.8", 2],
      tlvs: [{ type: 4, value: Buffer.alloc(65535 - 15) }],
    });
    assert.equal(buf.length, 16 + 65535);
    assert.equal(complete(buf).consumed, buf.length);
  });
});

// ---------------------------------------------------------------------------
// Properties

const port = fc.integer({ min: 0, max: 65535 });
/** 16 bytes biased towards zero words, so that `::` compression is exercised. */
const ipv6Bytes = fc
  .array(fc.oneof(fc.constant(0), fc.constant(0xffff), fc.integer({ min: 0, max: 0xffff })), { minLength: 8, maxLength: 8 })
  .chain((words) =>
    fc.constantFrom(
      words,
      [0, 0, 0, 0, 0, 0xffff, words[6]!, words[7]!], // IPv4-mapped
      [0, 0, 0, 0, 0, 0, words[6]!, words[7]!], // IPv4-compatible
    ),
  )
  .map((words) => {
    const b = Buffer.alloc(16);
    words.forEach((w, i) => b.writeUInt16BE(w, 2 * i));
    return b;
  });
const ipv4Text = fc.ipV4();
const ipv6Text = fc.oneof(fc.ipV6(), ipv6Bytes.map(wordsToFullHex));
const tlvArb = fc.record({
  type: fc.integer({ min: 0, max: 255 }).filter((t) => t !== 3 && t !== 5),
  value: fc.uint8Array({ maxLength: 40 }).map((u) => Buffer.from(u)),
}).map(({ type, value }) => ({ type, value })); // fc.record builds null-prototype objects
const unixPathArb = fc.oneof(
  fc.constant(""),
  fc.string({ minLength: 1, maxLength: 60 }).map((s) => "/" + s.replace(/\0/g, "_")),
  fc.string({ minLength: 1, maxLength: 30 }).map((s) => "\0" + s.replace(/\0/g, "_")),
);

describe("properties", () => {
  it("v1 TCP4 encode -> parse round-trips", () => {
    fc.assert(
      fc.property(ipv4Text, ipv4Text, port, port, (src, dst, sp, dp) => {
        const buf = encodeProxyV1({ family: "TCP4", source: [src, sp], destination: [dst, dp] });
        const { header, consumed } = complete(Buffer.concat([buf, PAYLOAD]));
        assert.equal(consumed, buf.length);
        assert.deepEqual(header.source, [src, sp]);
        assert.deepEqual(header.destination, [dst, dp]);
      }),
    );
  });

  it("v1 TCP6 encode -> parse round-trips random IPv6 text, equal after URL normalisation", () => {
    fc.assert(
      fc.property(ipv6Text, ipv6Text, port, port, (src, dst, sp, dp) => {
        const buf = encodeProxyV1({ family: "TCP6", source: [src, sp], destination: [dst, dp] });
        assert.ok(buf.length <= PROXY_V1_MAX_LENGTH);
        const { header } = complete(buf);
        const [s, sPort, flow, scope] = header.source as [string, number, number, number];
        assert.equal(urlIPv6(s), urlIPv6(src));
        assert.equal(s, nodeIPv6(src));
        assert.deepEqual([sPort, flow, scope], [sp, 0, 0]);
        const [d] = header.destination as [string, number];
        assert.equal(urlIPv6(d), urlIPv6(dst));
        // The wire form is what URL produces (compressed lowercase hex).
        assert.equal(`[${buf.toString().split(" ")[2]}]`, urlIPv6(src));
      }),
    );
  });

  it("v1 TCP6 parses hand-written lines of any valid text form into Node's canonical form", () => {
    fc.assert(
      fc.property(ipv6Text, ipv6Text, (src, dst) => {
        const line = `PROXY TCP6 ${src} ${dst} 1 2\r\n`;
        fc.pre(line.length <= PROXY_V1_MAX_LENGTH); // long dotted-tail forms can exceed the limit
        const { header } = complete(Buffer.from(line));
        assert.deepEqual(header.source, [nodeIPv6(src), 1, 0, 0]);
        assert.deepEqual(header.destination, [nodeIPv6(dst), 2, 0, 0]);
      }),
    );
  });

  it("v1: every prefix of a random valid line asks for one more byte", () => {
    const line = fc.oneof(
      fc.tuple(ipv4Text, ipv4Text, port, port).map(([a, b, p, q]) => `PROXY TCP4 ${a} ${b} ${p} ${q}\r\n`),
      fc.tuple(ipv6Text, ipv6Text, port, port).map(([a, b, p, q]) => `PROXY TCP6 ${a} ${b} ${p} ${q}\r\n`),
      fc.string({ maxLength: 80 }).map((junk) => `PROXY UNKNOWN ${junk.replace(/[\r\n]/g, "")}\r\n`),
    );
    fc.assert(
      fc.property(line, (text) => {
        const buf = Buffer.from(text, "utf8");
        fc.pre(buf.length <= PROXY_V1_MAX_LENGTH);
        for (let n = 0; n < buf.length; n++) assert.equal(needed(buf.subarray(0, n)), n + 1);
        assert.equal(complete(Buffer.concat([buf, PAYLOAD])).consumed, buf.length);
      }),
      { numRuns: 300 },
    );
  });

  it("v2 decodes random IPv6 bytes to Node's canonical text (and URL's, after normalisation)", () => {
    fc.assert(
      fc.property(ipv6Bytes, ipv6Bytes, port, port, (src, dst, sp, dp) => {
        const ports = Buffer.alloc(4);
        ports.writeUInt16BE(sp, 0);
        ports.writeUInt16BE(dp, 2);
        const { header } = complete(v2(0x21, 0x21, Buffer.concat([src, dst, ports])));
        const [s] = header.source as [string, number];
        const [d] = header.destination as [string, number];
        assert.equal(s, nodeIPv6(wordsToFullHex(src)));
        assert.equal(d, nodeIPv6(wordsToFullHex(dst)));
        assert.equal(urlIPv6(s), urlIPv6(wordsToFullHex(src)));
        assert.equal(urlIPv6(d), urlIPv6(wordsToFullHex(dst)));
      }),
    );
  });

  const v2Fields: fc.Arbitrary<ProxyV2Fields> = fc.oneof(
    fc.record({
      command: fc.constant("PROXY" as const),
      family: fc.constant("TCP4" as const),
      transport: fc.constantFrom("stream" as const, "dgram" as const),
      source: fc.tuple(ipv4Text, port),
      destination: fc.tuple(ipv4Text, port),
      tlvs: fc.array(tlvArb, { maxLength: 4 }),
    }),
    fc.record({
      command: fc.constant("PROXY" as const),
      family: fc.constant("TCP6" as const),
      transport: fc.constantFrom("stream" as const, "dgram" as const),
      source: fc.tuple(ipv6Text, port).map(([h, p]) => [nodeIPv6(h), p, 0, 0] as [string, number, number, number]),
      destination: fc.tuple(ipv6Text, port).map(([h, p]) => [nodeIPv6(h), p, 0, 0] as [string, number, number, number]),
      tlvs: fc.array(tlvArb, { maxLength: 4 }),
    }),
    fc.record({
      command: fc.constant("PROXY" as const),
      family: fc.constant("UNIX" as const),
      transport: fc.constantFrom("stream" as const, "dgram" as const),
      source: unixPathArb,
      destination: unixPathArb,
      tlvs: fc.array(tlvArb, { maxLength: 4 }),
    }),
    fc.record({
      command: fc.constantFrom("PROXY" as const, "LOCAL" as const),
      family: fc.constant("UNKNOWN" as const),
      transport: fc.constant("unspec" as const),
      source: fc.constant(null),
      destination: fc.constant(null),
      tlvs: fc.array(tlvArb, { maxLength: 4 }),
    }),
  );

  it("v2 encode -> parse round-trips every family, transport and TLV list", () => {
    fc.assert(
      fc.property(v2Fields, fc.boolean(), fc.uint8Array({ maxLength: 32 }), (fields, checksum, payload) => {
        const buf = encodeProxyV2({ ...fields, checksum });
        const { header, consumed } = complete(Buffer.concat([buf, payload]));
        assert.equal(consumed, buf.length);
        const tlvs = [...(fields.tlvs ?? [])];
        if (checksum) tlvs.push({ type: 3, value: buf.subarray(buf.length - 4) });
        assert.deepEqual(header, {
          version: 2,
          command: fields.command,
          family: fields.family,
          transport: fields.transport,
          source: fields.source,
          destination: fields.destination,
          tlvs,
        });
      }),
    );
  });

  it("v2 headers fed in random chunks complete exactly at their end", () => {
    fc.assert(
      fc.property(v2Fields, fc.array(fc.integer({ min: 1, max: 64 }), { maxLength: 20 }), (fields, chunks) => {
        const buf = Buffer.concat([encodeProxyV2(fields), PAYLOAD]);
        let have = 0;
        for (const size of [...chunks, buf.length]) {
          have = Math.min(buf.length, have + size);
          const r = parseProxyHeader(buf.subarray(0, have));
          if ("header" in r) {
            assert.equal(r.consumed, buf.length - PAYLOAD.length);
            return;
          }
          assert.ok(r.needed > have);
        }
        assert.fail("never completed");
      }),
    );
  });

  it("random bytes either parse or throw ProxyProtocolError, nothing else", () => {
    const prefixes = [
      Buffer.alloc(0),
      Buffer.from("PROXY "),
      Buffer.from("PROXY TCP4 "),
      Buffer.from("PROXY TCP6 "),
      hex(SIG_HEX + "21"),
      hex(SIG_HEX + "2111"),
      hex(SIG_HEX + "2100"),
    ];
    fc.assert(
      fc.property(fc.constantFrom(...prefixes), fc.uint8Array({ maxLength: 140 }), (prefix, tail) => {
        const buf = Buffer.concat([prefix, tail]);
        try {
          const r = parseProxyHeader(buf);
          if ("needed" in r) assert.ok(r.needed > buf.length);
          else assert.ok(r.consumed <= buf.length);
        } catch (err) {
          assert.ok(err instanceof ProxyProtocolError, String(err));
        }
      }),
      { numRuns: 2000 },
    );
  });

  it("v2 TLV sequences of random shape never read past the header", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 64 }), (body) => {
        const buf = Buffer.concat([v2(0x21, 0x00, Buffer.from(body)), Buffer.alloc(64, 0xaa)]);
        try {
          const { header, consumed } = complete(buf);
          assert.equal(consumed, 16 + body.length);
          const total = header.tlvs.reduce((n, t) => n + 3 + t.value.length, 0);
          assert.equal(total, body.length);
        } catch (err) {
          assert.ok(err instanceof ProxyProtocolError, String(err));
        }
      }),
    );
  });
});
