/**
 * The PROXY protocol, versions 1 (text) and 2 (binary), as specified in
 * haproxy's `doc/proxy-protocol.txt`: a strict, incremental parser for the
 * receiving side and encoders for the sending side.
 *
 * The parser never guesses. Bytes that cannot begin a PROXY header are
 * rejected as soon as they arrive, every field is checked against the
 * specification, and a header is only returned once it is complete.
 */
import { Buffer, isUtf8 } from "node:buffer";
import { isIPv4, isIPv6 } from "node:net";
import type { Address } from "./address.js";
import { ProxyProtocolError, describe, numberError, rangeError, typeError } from "./errors.js";

/** The longest version 1 line a receiver must accept, CRLF included (spec §2.1). */
export const PROXY_V1_MAX_LENGTH = 107;

/** The length of the fixed part of a version 2 header: signature, version/command, family, length. */
export const PROXY_V2_HEADER_LENGTH = 16;

/**
 * The 12-byte signature that begins every version 2 header
 * (`\r\n\r\n\0\r\nQUIT\n`). A copy: changing it does not affect the parser.
 */
export const PROXY_V2_SIGNATURE: Buffer = Buffer.from([
  0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a,
]);

/** The TLV types registered by the specification (spec §2.2). Any other type is kept as is. */
export const ProxyTlvType = {
  /** Application-Layer Protocol Negotiation, e.g. `h2`. */
  ALPN: 0x01,
  /** The host name the client asked for (TLS SNI), UTF-8. */
  AUTHORITY: 0x02,
  /** CRC32c of the whole header; verified by the parser when present (a mismatch refuses the header, `LOCAL` included). */
  CRC32C: 0x03,
  /** Padding, to be ignored. */
  NOOP: 0x04,
  /** An opaque connection identifier of at most 128 bytes. */
  UNIQUE_ID: 0x05,
  /** TLS information, with sub-TLVs of its own. */
  SSL: 0x20,
  /** Sub-TLV of `SSL`: the TLS version. */
  SSL_VERSION: 0x21,
  /** Sub-TLV of `SSL`: the client certificate's Common Name. */
  SSL_CN: 0x22,
  /** Sub-TLV of `SSL`: the cipher name. */
  SSL_CIPHER: 0x23,
  /** Sub-TLV of `SSL`: the certificate's signature algorithm. */
  SSL_SIG_ALG: 0x24,
  /** Sub-TLV of `SSL`: the certificate's key algorithm. */
  SSL_KEY_ALG: 0x25,
  /** Sub-TLV of `SSL`: the key exchange group, e.g. `X25519`. */
  SSL_GROUP: 0x26,
  /** Sub-TLV of `SSL`: the signature scheme of the handshake, e.g. `rsa_pss_rsae_sha256`. */
  SSL_SIG_SCHEME: 0x27,
  /** Sub-TLV of `SSL`: the client's certificate, DER. */
  SSL_CLIENT_CERT: 0x28,
  /** The network namespace's name. */
  NETNS: 0x30,
} as const;

/** The address family a header announces. `UNKNOWN` is v1 `UNKNOWN` or v2 `AF_UNSPEC`. */
export type ProxyFamily = "TCP4" | "TCP6" | "UNIX" | "UNKNOWN";

/** The transport a header announces (`SOCK_STREAM`, `SOCK_DGRAM`, or unspecified). */
export type ProxyTransport = "stream" | "dgram" | "unspec";

/** One version 2 Type-Length-Value vector. */
export interface ProxyTlv {
  /** The type byte, 0 to 255 (see {@link ProxyTlvType}). */
  type: number;
  /** The value (a copy, not a view of the buffer that was parsed). */
  value: Buffer;
}

/** A parsed PROXY protocol header. */
export interface ProxyHeader {
  /** 1 for the text format, 2 for the binary one. */
  version: 1 | 2;
  /**
   * `PROXY` for a relayed connection, `LOCAL` (v2 only) for one the proxy
   * opened itself (e.g. a health check), whose real endpoints are to be used.
   */
  command: "PROXY" | "LOCAL";
  /**
   * The announced family. v1 `UNKNOWN` and v2 `AF_UNSPEC` are `UNKNOWN`; v2
   * UDP is `TCP4`/`TCP6` with `transport: "dgram"`. For `LOCAL` it is the
   * family byte as sent, for information only; a `LOCAL` header whose block
   * does not parse (unknown family, short block, malformed TLVs) is accepted
   * with its block discarded, as HAProxy's specification asks: `UNKNOWN`,
   * `unspec`, no TLVs. One whose block parses has its CRC32C verified, as
   * any header's. The same holds for a `PROXY` header with an unspecified
   * family or transport but not both (bytes 0x01, 0x02, 0x10, 0x20, 0x30,
   * which the spec gives no layout): accepted without addresses.
   */
  family: ProxyFamily;
  /** `stream` for v1 TCP, `unspec` for v1 `UNKNOWN`, and the transport nibble for v2. */
  transport: ProxyTransport;
  /**
   * The client's address: `[ip, port]` for IPv4, `[ip, port, 0, 0]` for
   * IPv6 (in Node's canonical text form), a path for UNIX (`""` for an
   * unnamed socket, a leading `"\0"` for an abstract one). `null` for
   * `LOCAL`, for `UNKNOWN`, and for a v2 header with an unspecified family
   * or transport, whose address information the specification says to ignore.
   */
  source: Address | null;
  /** The address the client connected to, in the same form as {@link ProxyHeader.source}. */
  destination: Address | null;
  /** The v2 TLVs in the order they were sent (always empty for v1). */
  tlvs: ProxyTlv[];
}

/**
 * What {@link parseProxyHeader} returns: a complete header and the number
 * of bytes it took, or the total number of bytes to wait for.
 */
export type ProxyParseResult =
  | {
      /** The header. */
      header: ProxyHeader;
      /** Bytes the header occupied; the connection's data starts after them. */
      consumed: number;
    }
  | {
      /** Bytes (from the start of the buffer) to wait for before parsing again. */
      needed: number;
    };

/** An IP endpoint for {@link encodeProxyV1}; `flowinfo` and `scopeid` are not carried by the protocol. */
export type ProxyIpEndpoint = [host: string, port: number] | [host: string, port: number, flowinfo: number, scopeid: number];

/** The fields {@link encodeProxyV1} writes. */
export interface ProxyV1Fields {
  /** `TCP4` or `TCP6` (with both endpoints), or `UNKNOWN` (written as `PROXY UNKNOWN\r\n`, endpoints ignored). */
  family: "TCP4" | "TCP6" | "UNKNOWN";
  /** The client's endpoint. */
  source?: ProxyIpEndpoint | null;
  /** The endpoint the client connected to. */
  destination?: ProxyIpEndpoint | null;
}

/** The fields {@link encodeProxyV2} writes. */
export interface ProxyV2Fields {
  /** `PROXY` for a relayed connection, `LOCAL` for one the proxy opened itself. */
  command: "PROXY" | "LOCAL";
  /**
   * The family. For `PROXY` it defaults to the one of `source` (`UNKNOWN`
   * without one); for `LOCAL` it defaults to `UNKNOWN`, and the addresses
   * are only written when a family is given.
   */
  family?: ProxyFamily;
  /**
   * Defaults to `stream`, or `unspec` for the `UNKNOWN` family. `unspec` goes
   * with the `UNKNOWN` family only, and `UNKNOWN` with `unspec` only: the
   * specification defines no other pairing (no byte 0x10 or 0x01).
   */
  transport?: ProxyTransport;
  /** `[ip, port]` (or the IPv6 4-tuple) for TCP4/TCP6, a path of at most 108 UTF-8 bytes for UNIX. */
  source?: Address | null;
  /** The destination, in the same form as `source`. */
  destination?: Address | null;
  /** TLVs to append after the addresses, in this order. */
  tlvs?: ReadonlyArray<{
    /** The type byte, 0 to 255 (see {@link ProxyTlvType}). */
    type: number;
    /** The value. */
    value: Uint8Array;
  }>;
  /** Append a `CRC32C` TLV holding the checksum of the whole header. */
  checksum?: boolean;
}

// ---------------------------------------------------------------------------
// Constants and small helpers

const CR = 0x0d;
const LF = 0x0a;
/** Private copies, so that callers changing the exported buffer change nothing here. */
const V2_SIGNATURE = Buffer.from(PROXY_V2_SIGNATURE);
const V1_PREFIX = Buffer.from("PROXY ", "latin1");

/** Address block sizes per v2 family (spec §2.2). */
const V2_ADDRESS_BLOCK: Readonly<Record<ProxyFamily, number>> = { UNKNOWN: 0, TCP4: 12, TCP6: 36, UNIX: 216 };
const V2_FAMILIES: readonly ProxyFamily[] = ["UNKNOWN", "TCP4", "TCP6", "UNIX"];
const V2_TRANSPORTS: readonly ProxyTransport[] = ["unspec", "stream", "dgram"];
const UNIX_PATH_BYTES = 108;
const UNIQUE_ID_MAX = 128;
const V2_LENGTH_MAX = 0xffff;

/** One IPv4 octet in decimal without leading zeros. */
const OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])";
const OCTET_RE = new RegExp(`^${OCTET}$`);
const IPV4_RE = new RegExp(`^${OCTET}(?:\\.${OCTET}){3}$`);
const IPV6_CHARS_RE = /^[0-9A-Fa-f:.]*$/;
const HEX_GROUP_RE = /^[0-9A-Fa-f]{1,4}$/;
const PORT_RE = /^(?:0|[1-9][0-9]{0,4})$/;
/** The longest textual IPv6 address (`INET6_ADDRSTRLEN` - 1, with an IPv4 tail). */
const IPV6_TEXT_MAX = 45;

function fail(message: string, cause?: unknown): never {
  throw new ProxyProtocolError(message, cause === undefined ? undefined : { cause });
}

/** A short, printable excerpt of received bytes for error messages. */
function preview(data: Uint8Array, start = 0, max = 24): string {
  const end = Math.min(data.length, start + max);
  let text = "";
  for (let i = start; i < end; i++) {
    const b = data[i]!;
    text += b >= 0x20 && b < 0x7f && b !== 0x22 && b !== 0x5c ? String.fromCharCode(b) : `\\x${b.toString(16).padStart(2, "0")}`;
  }
  return `"${text}"${end < data.length ? "..." : ""}`;
}

/** Whether the first bytes of `data` (as many as there are, up to `prefix.length`) equal `prefix`'s. */
function startsLike(data: Uint8Array, prefix: Uint8Array): boolean {
  const n = Math.min(data.length, prefix.length);
  for (let i = 0; i < n; i++) {
    if (data[i] !== prefix[i]) return false;
  }
  return true;
}

// ---------------------------------------------------------------------------
// IPv6 text <-> words

/**
 * Parses textual IPv6 (hex groups, one optional `::`, an optional dotted
 * IPv4 tail) into eight 16-bit words, or returns `null`. No zone index.
 * @internal Also the server's per-peer keys.
 */
export function parseIPv6Text(text: string): number[] | null {
  if (text.length === 0 || text.length > IPV6_TEXT_MAX || !IPV6_CHARS_RE.test(text)) return null;
  let hexPart = text;
  const tail: number[] = [];
  if (text.includes(".")) {
    const colon = text.lastIndexOf(":");
    if (colon < 0) return null;
    const dotted = text.slice(colon + 1);
    if (!IPV4_RE.test(dotted)) return null;
    const o = dotted.split(".").map(Number) as [number, number, number, number];
    tail.push((o[0] << 8) | o[1], (o[2] << 8) | o[3]);
    // Keep a "::" that precedes the IPv4 tail; drop a single separating ":".
    hexPart = text.slice(0, colon + 1);
    if (!hexPart.endsWith("::")) hexPart = hexPart.slice(0, -1);
  }
  const halves = hexPart.split("::");
  if (halves.length > 2) return null;
  const groups = (part: string): number[] | null => {
    if (part === "") return [];
    const words: number[] = [];
    for (const group of part.split(":")) {
      if (!HEX_GROUP_RE.test(group)) return null;
      words.push(parseInt(group, 16));
    }
    return words;
  };
  const head = groups(halves[0]!);
  if (head === null) return null;
  if (halves.length === 1) {
    const words = [...head, ...tail];
    return words.length === 8 ? words : null;
  }
  const rest = groups(halves[1]!);
  if (rest === null) return null;
  const after = [...rest, ...tail];
  const zeros = 8 - head.length - after.length;
  if (zeros < 1) return null;
  return [...head, ...new Array<number>(zeros).fill(0), ...after];
}

/**
 * Formats eight 16-bit words as text: lowercase hex without leading zeros,
 * the first longest run of two or more zero words compressed to `::`.
 * With `mixed`, IPv4-mapped (`::ffff:a.b.c.d`) and IPv4-compatible
 * (`::a.b.c.d`) addresses end in dotted decimal, exactly as Node (libuv)
 * prints socket addresses; without it the result equals what the WHATWG
 * URL serializer produces.
 * @internal Also the server's per-peer keys.
 */
export function formatIPv6(words: readonly number[], mixed: boolean): string {
  let bestStart = -1;
  let bestLength = 0;
  let runStart = -1;
  for (let i = 0; i < 8; i++) {
    if (words[i] === 0) {
      if (runStart < 0) runStart = i;
      if (i + 1 - runStart > bestLength) {
        bestStart = runStart;
        bestLength = i + 1 - runStart;
      }
    } else {
      runStart = -1;
    }
  }
  if (bestLength < 2) bestStart = -1;
  if (mixed && bestStart === 0 && (bestLength === 6 || (bestLength === 5 && words[5] === 0xffff))) {
    const w6 = words[6]!;
    const w7 = words[7]!;
    const dotted = `${w6 >> 8}.${w6 & 0xff}.${w7 >> 8}.${w7 & 0xff}`;
    return bestLength === 6 ? `::${dotted}` : `::ffff:${dotted}`;
  }
  const hex = (list: readonly number[]): string => list.map((w) => w.toString(16)).join(":");
  if (bestStart < 0) return hex(words);
  return `${hex(words.slice(0, bestStart))}::${hex(words.slice(bestStart + bestLength))}`;
}

function wordsAt(data: Uint8Array, offset: number): number[] {
  const words: number[] = [];
  for (let i = 0; i < 8; i++) words.push((data[offset + 2 * i]! << 8) | data[offset + 2 * i + 1]!);
  return words;
}

// ---------------------------------------------------------------------------
// CRC32c (Castagnoli, reflected polynomial 0x82f63b78), for PP2_TYPE_CRC32C

let crc32cTable: Uint32Array | undefined;

function crc32c(data: Uint8Array): number {
  if (crc32cTable === undefined) {
    crc32cTable = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
      crc32cTable[n] = c >>> 0;
    }
  }
  let crc = 0xffffffff;
  for (let i = 0; i < data.length; i++) crc = crc32cTable[(crc ^ data[i]!) & 0xff]! ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

// ---------------------------------------------------------------------------
// Parser

/**
 * @internal The client's address a header gives a server: the source of a
 * `PROXY` header; `null` (keep the real peer's) for `LOCAL` and `UNKNOWN`.
 */
export function proxiedAddress(header: ProxyHeader): Address | null {
  return header.command === "PROXY" && header.source !== null ? header.source : null;
}

/**
 * Parses the PROXY protocol header at the start of a connection.
 *
 * Call it with all the bytes received so far. It returns:
 * - `{ header, consumed }` once a complete, valid header is in: the
 *   connection's own data starts at `buf[consumed]`;
 * - `{ needed }` while the header is incomplete: the total number of bytes
 *   `buf` must hold before another call can progress (v1: one more byte, up
 *   to {@link PROXY_V1_MAX_LENGTH}; v2: 16, then 16 plus the length field).
 *
 * Whatever is already in `buf` is checked, so a connection that does not
 * start with a PROXY header is rejected at its first byte that cannot
 * belong to one.
 *
 * @param buf The first bytes received on the connection.
 * @throws ProxyProtocolError for anything that is not (the beginning of) a
 *   valid version 1 or version 2 header.
 * @throws TypeError (`ERR_INVALID_ARG_TYPE`) when `buf` is not a Buffer or Uint8Array.
 */
export function parseProxyHeader(buf: Buffer): ProxyParseResult {
  const raw: unknown = buf;
  if (!(raw instanceof Uint8Array)) {
    throw typeError("The PROXY protocol parser expects a Buffer.");
  }
  const data = Buffer.isBuffer(raw) ? raw : Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength);
  if (data.length === 0) return { needed: 1 };
  if (startsLike(data, V2_SIGNATURE)) return parseV2(data);
  if (startsLike(data, V1_PREFIX)) return parseV1(data);
  fail(`Not a PROXY protocol header: the connection starts with ${preview(data, 0, 16)}.`);
}

// --- version 1 -------------------------------------------------------------

function parseV1(data: Buffer): ProxyParseResult {
  const start = V1_PREFIX.length;
  const limit = Math.min(data.length, PROXY_V1_MAX_LENGTH);
  for (let i = start; i < limit; i++) {
    const b = data[i];
    if (b === LF) fail(`Invalid PROXY v1 header: a line feed without a carriage return at byte ${i}.`);
    if (b !== CR) continue;
    if (i + 2 > PROXY_V1_MAX_LENGTH) {
      fail(`Invalid PROXY v1 header: the line is longer than ${PROXY_V1_MAX_LENGTH} bytes.`);
    }
    if (i + 1 === data.length) {
      checkV1Line(data.toString("latin1", start, i), false);
      return { needed: data.length + 1 };
    }
    if (data[i + 1] !== LF) fail(`Invalid PROXY v1 header: a carriage return without a line feed at byte ${i}.`);
    return { header: checkV1Line(data.toString("latin1", start, i), true)!, consumed: i + 2 };
  }
  if (data.length >= PROXY_V1_MAX_LENGTH) {
    fail(`Invalid PROXY v1 header: no CRLF within the first ${PROXY_V1_MAX_LENGTH} bytes.`);
  }
  if (data.length > start) checkV1Line(data.toString("latin1", start), false);
  return { needed: data.length + 1 };
}

/**
 * Checks the text after `"PROXY "`. With `complete`, it is the whole line
 * (CRLF excluded) and the header is returned; otherwise it is what has
 * arrived so far and must be a prefix of a valid line.
 */
function checkV1Line(body: string, complete: boolean): ProxyHeader | undefined {
  if (body === "UNKNOWN" || body.startsWith("UNKNOWN ")) {
    // "The receiver must ignore anything presented before the CRLF."
    if (!complete) return undefined;
    return { version: 1, command: "PROXY", family: "UNKNOWN", transport: "unspec", source: null, destination: null, tlvs: [] };
  }
  const fields = body.split(" ");
  const family = fields[0]!;
  if (!complete && fields.length === 1) {
    if (!["TCP4", "TCP6", "UNKNOWN"].some((name) => name.startsWith(family))) {
      fail(`Invalid PROXY v1 header: unknown protocol ${JSON.stringify(family)}.`);
    }
    return undefined;
  }
  if (family !== "TCP4" && family !== "TCP6") {
    fail(`Invalid PROXY v1 header: unknown protocol ${JSON.stringify(family)} (expected TCP4, TCP6 or UNKNOWN).`);
  }
  const names = ["", "source address", "destination address", "source port", "destination port"];
  const last = fields.length - 1;
  for (let i = 1; i < Math.min(fields.length, 5); i++) {
    const text = fields[i]!;
    const partial = !complete && i === last;
    if (text === "" && !partial) fail(`Invalid PROXY v1 header: the ${names[i]} is empty (two spaces in a row?).`);
    if (i <= 2) checkV1Ip(family, text, partial, names[i]!);
    else checkV1Port(text, partial, names[i]!);
  }
  if (fields.length > 5) fail("Invalid PROXY v1 header: more than four fields after the protocol, or a trailing space.");
  if (complete && fields.length < 5) fail("Invalid PROXY v1 header: it needs a source and destination address and port.");
  if (!complete) return undefined;
  const [, src, dst, sport, dport] = fields as [string, string, string, string, string];
  if (family === "TCP4") {
    return {
      version: 1,
      command: "PROXY",
      family,
      transport: "stream",
      source: [src, Number(sport)],
      destination: [dst, Number(dport)],
      tlvs: [],
    };
  }
  return {
    version: 1,
    command: "PROXY",
    family,
    transport: "stream",
    source: [formatIPv6(parseIPv6Text(src)!, true), Number(sport), 0, 0],
    destination: [formatIPv6(parseIPv6Text(dst)!, true), Number(dport), 0, 0],
    tlvs: [],
  };
}

function checkV1Ip(family: "TCP4" | "TCP6", text: string, partial: boolean, name: string): void {
  const shown = JSON.stringify(text);
  if (family === "TCP4") {
    if (partial) {
      // Every prefix of a valid octet is itself a valid octet.
      const parts = text.split(".");
      const ok =
        /^[0-9.]*$/.test(text) &&
        parts.length <= 4 &&
        parts.every((part, i) => OCTET_RE.test(part) || (i === parts.length - 1 && part === ""));
      if (!ok) fail(`Invalid PROXY v1 header: the ${name} ${shown}... is not an IPv4 address.`);
      return;
    }
    if (IPV4_RE.test(text) && isIPv4(text)) return;
    if (isIPv6(text)) fail(`Invalid PROXY v1 header: the ${name} ${shown} is IPv6 but the protocol is TCP4.`);
    fail(`Invalid PROXY v1 header: the ${name} ${shown} is not an IPv4 address in canonical form.`);
  }
  if (partial) {
    const ok =
      IPV6_CHARS_RE.test(text) &&
      text.length <= IPV6_TEXT_MAX &&
      !text.includes(":::") &&
      text.split("::").length <= 2;
    if (!ok) fail(`Invalid PROXY v1 header: the ${name} ${shown}... is not an IPv6 address.`);
    return;
  }
  if (IPV6_CHARS_RE.test(text) && isIPv6(text) && parseIPv6Text(text) !== null) return;
  if (isIPv4(text)) fail(`Invalid PROXY v1 header: the ${name} ${shown} is IPv4 but the protocol is TCP6.`);
  fail(`Invalid PROXY v1 header: the ${name} ${shown} is not an IPv6 address.`);
}

function checkV1Port(text: string, partial: boolean, name: string): void {
  // Every prefix of a valid port is itself a valid port (or empty).
  if (partial && text === "") return;
  if (PORT_RE.test(text) && Number(text) <= 65535) return;
  fail(
    `Invalid PROXY v1 header: the ${name} ${JSON.stringify(text)}${partial ? "..." : ""} is not a decimal ` +
      "number from 0 to 65535 without leading zeros.",
  );
}

// --- version 2 -------------------------------------------------------------

function parseV2(data: Buffer): ProxyParseResult {
  if (data.length > 12) {
    const verCmd = data[12]!;
    if (verCmd >> 4 !== 2) fail(`Invalid PROXY v2 header: unsupported version ${verCmd >> 4} (byte 13 is 0x${hex2(verCmd)}).`);
    if ((verCmd & 0x0f) > 1) fail(`Invalid PROXY v2 header: unknown command ${verCmd & 0x0f} (byte 13 is 0x${hex2(verCmd)}).`);
  }
  const local = data.length > 12 && (data[12]! & 0x0f) === 0;
  if (data.length > 13 && !local) decodeFamilyByte(data[13]!);
  if (data.length < PROXY_V2_HEADER_LENGTH) return { needed: PROXY_V2_HEADER_LENGTH };
  const command = local ? "LOCAL" : "PROXY";
  if (!local && !layoutUndefined(data[13]!)) return checked(data, readV2Block(data, "PROXY"));
  // LOCAL (the proxy's own connection, a health check): HAProxy's spec has the
  // receiver accept it and discard the protocol block, family included. A
  // PROXY header with UNSPEC in one nibble only (see layoutUndefined) has a
  // block the spec gives no layout for, and its UNSPEC rule lets a receiver
  // accept it, keep the real endpoints and ignore the address information
  // (nginx does; HAProxy means to, "unsupported protocol, keep local
  // connection address", but then walks TLVs from byte 0 and refuses it).
  // So a block that does not parse is skipped rather than refused. One that
  // does parse has its TLVs read and its CRC32C verified: the checksum covers
  // the whole header, the command byte included, and the spec's rule for it
  // ("MUST treat the TCP connection as invalid") has no exception. HAProxy
  // 3.0 and later refuse a LOCAL header with a wrong checksum too
  // (conn_recv_proxy reads a LOCAL header's TLVs since its commit 8b72270e9,
  // May 2024; 2.x skipped them, checksum included).
  let block: V2Block | { needed: number };
  try {
    block = readV2Block(data, command);
  } catch (err) {
    if (!(err instanceof ProxyProtocolError)) throw err;
    const total = PROXY_V2_HEADER_LENGTH + data.readUInt16BE(14);
    if (data.length < total) return { needed: total };
    const header: ProxyHeader = { version: 2, command, family: "UNKNOWN", transport: "unspec", source: null, destination: null, tlvs: [] };
    return { header, consumed: total };
  }
  return checked(data, block);
}

/**
 * Whether a family/transport byte has UNSPEC in one nibble only (0x01, 0x02,
 * 0x10, 0x20, 0x30): each nibble is defined, the pair is not among the
 * seven bytes the spec lists (0x00, 0x11, 0x12, 0x21, 0x22, 0x31, 0x32),
 * so no address block layout goes with it.
 */
function layoutUndefined(byte: number): boolean {
  return (byte >> 4 === 0) !== ((byte & 0x0f) === 0);
}

/** A complete v2 header, and the offset of its CRC32C value (-1 without one). */
interface V2Block {
  header: ProxyHeader;
  consumed: number;
  crcOffset: number;
}

/** Verifies the CRC32C of a complete block (the spec's "MUST treat the TCP connection as invalid"). */
function checked(data: Buffer, block: V2Block | { needed: number }): ProxyParseResult {
  if (!("header" in block)) return block;
  if (block.crcOffset >= 0) verifyChecksum(data.subarray(0, block.consumed), block.crcOffset);
  return { header: block.header, consumed: block.consumed };
}

function readV2Block(data: Buffer, command: "PROXY" | "LOCAL"): V2Block | { needed: number } {
  const { family, transport } = decodeFamilyByte(data[13]!);
  const length = data.readUInt16BE(14);
  const block = V2_ADDRESS_BLOCK[family];
  if (length < block && (command === "PROXY" || length !== 0)) {
    fail(
      `Invalid PROXY v2 header: the length ${length} is shorter than the ${block}-byte address block of ` +
        `family ${family}${command === "LOCAL" ? " (a LOCAL header may only omit it entirely, with length 0)" : ""}.`,
    );
  }
  const total = PROXY_V2_HEADER_LENGTH + length;
  if (data.length < total) return { needed: total };

  const header = data.subarray(0, total);
  // A LOCAL header with length 0 has neither addresses nor TLVs.
  const tlvStart = length === 0 ? total : PROXY_V2_HEADER_LENGTH + block;
  const { tlvs, crcOffset } = parseTlvs(header, tlvStart);

  let source: Address | null = null;
  let destination: Address | null = null;
  if (command === "PROXY" && transport !== "unspec") {
    const a = PROXY_V2_HEADER_LENGTH;
    switch (family) {
      case "TCP4":
        source = [`${header[a]}.${header[a + 1]}.${header[a + 2]}.${header[a + 3]}`, header.readUInt16BE(a + 8)];
        destination = [`${header[a + 4]}.${header[a + 5]}.${header[a + 6]}.${header[a + 7]}`, header.readUInt16BE(a + 10)];
        break;
      case "TCP6":
        source = [formatIPv6(wordsAt(header, a), true), header.readUInt16BE(a + 32), 0, 0];
        destination = [formatIPv6(wordsAt(header, a + 16), true), header.readUInt16BE(a + 34), 0, 0];
        break;
      case "UNIX":
        source = decodeUnixPath(header.subarray(a, a + UNIX_PATH_BYTES), "source");
        destination = decodeUnixPath(header.subarray(a + UNIX_PATH_BYTES, a + 2 * UNIX_PATH_BYTES), "destination");
        break;
      case "UNKNOWN":
        break;
    }
  }
  return { header: { version: 2, command, family, transport, source, destination, tlvs }, consumed: total, crcOffset };
}

function hex2(byte: number): string {
  return byte.toString(16).padStart(2, "0");
}

function decodeFamilyByte(byte: number): { family: ProxyFamily; transport: ProxyTransport } {
  const family = V2_FAMILIES[byte >> 4];
  const transport = V2_TRANSPORTS[byte & 0x0f];
  if (family === undefined) fail(`Invalid PROXY v2 header: unknown address family ${byte >> 4} (byte 14 is 0x${hex2(byte)}).`);
  if (transport === undefined) fail(`Invalid PROXY v2 header: unknown transport ${byte & 0x0f} (byte 14 is 0x${hex2(byte)}).`);
  return { family, transport };
}

/**
 * Calls `each` with every TLV from `start` to the end of `buf` (type, value
 * offset, size); `what` names the container in errors.
 */
function eachTlv(buf: Buffer, start: number, what: string, each: (type: number, valueStart: number, size: number) => void): void {
  let offset = start;
  while (offset < buf.length) {
    if (offset + 3 > buf.length) {
      fail(`Invalid ${what}: ${buf.length - offset} byte(s) at offset ${offset} are too few for a TLV.`);
    }
    const type = buf[offset]!;
    const size = buf.readUInt16BE(offset + 1);
    const valueStart = offset + 3;
    if (valueStart + size > buf.length) {
      fail(`Invalid ${what}: the TLV of type 0x${hex2(type)} at offset ${offset} announces ${size} byte(s) but ${buf.length - valueStart} are left.`);
    }
    each(type, valueStart, size);
    offset = valueStart + size;
  }
}

/** Reads the TLVs from `start` to the end of `header`; the CRC32C's value offset is returned, not verified. */
function parseTlvs(header: Buffer, start: number): { tlvs: ProxyTlv[]; crcOffset: number } {
  const tlvs: ProxyTlv[] = [];
  let crcOffset = -1;
  eachTlv(header, start, "PROXY v2 header", (type, valueStart, size) => {
    if (type === ProxyTlvType.CRC32C) {
      if (size !== 4) fail(`Invalid PROXY v2 header: the CRC32C TLV holds ${size} bytes instead of 4.`);
      if (crcOffset >= 0) fail("Invalid PROXY v2 header: more than one CRC32C TLV.");
      crcOffset = valueStart;
    } else if (type === ProxyTlvType.UNIQUE_ID && size > UNIQUE_ID_MAX) {
      fail(`Invalid PROXY v2 header: the UNIQUE_ID TLV holds ${size} bytes, more than ${UNIQUE_ID_MAX}.`);
    }
    tlvs.push({ type, value: Buffer.from(header.subarray(valueStart, valueStart + size)) });
  });
  return { tlvs, crcOffset };
}

/** What the `SSL` TLV of a PROXY v2 header says (see {@link parseProxySsl}). */
export interface ProxySsl {
  /** The client byte as sent: bit 0x01 TLS, 0x02 a certificate on this connection, 0x04 one in this TLS session. */
  client: number;
  /** The client connected over TLS (bit 0x01). */
  tls: boolean;
  /** The client presented a certificate on this connection (bit 0x02). */
  certOnConnection: boolean;
  /** The client presented a certificate at some point in this TLS session (bit 0x04, set on a resumed session). */
  certInSession: boolean;
  /** The verify field: 0 when the client's certificate was presented and verified, non-zero otherwise. */
  verify: number;
  /** `verify === 0`. */
  verified: boolean;
  /** `SSL_VERSION`, e.g. `TLSv1.3`. */
  version: string | null;
  /** `SSL_CN`: the Common Name of the client certificate's subject (UTF-8). */
  cn: string | null;
  /** `SSL_CIPHER`, e.g. `TLS_AES_256_GCM_SHA384`. */
  cipher: string | null;
  /** `SSL_SIG_ALG`: the algorithm that signed the certificate the frontend used. */
  sigAlg: string | null;
  /** `SSL_KEY_ALG`: the algorithm of that certificate's key, e.g. `RSA2048`. */
  keyAlg: string | null;
  /** `SSL_GROUP`: the key exchange group, e.g. `X25519`. */
  group: string | null;
  /** `SSL_SIG_SCHEME`: the signature scheme of the handshake. */
  sigScheme: string | null;
  /** `SSL_CLIENT_CERT`: the client's certificate, DER (`new X509Certificate(clientCert)` reads it). */
  clientCert: Buffer | null;
  /** Every sub-TLV in the order sent, those above included. */
  tlvs: ProxyTlv[];
}

const SSL_STRINGS = {
  [ProxyTlvType.SSL_VERSION]: "version",
  [ProxyTlvType.SSL_CN]: "cn",
  [ProxyTlvType.SSL_CIPHER]: "cipher",
  [ProxyTlvType.SSL_SIG_ALG]: "sigAlg",
  [ProxyTlvType.SSL_KEY_ALG]: "keyAlg",
  [ProxyTlvType.SSL_GROUP]: "group",
  [ProxyTlvType.SSL_SIG_SCHEME]: "sigScheme",
} as const satisfies Record<number, keyof ProxySsl>;

/**
 * Reads the value of a PROXY v2 `SSL` TLV (what HAProxy's `send-proxy-v2-ssl`
 * and `send-proxy-v2-ssl-cn` add): the client and verify fields and the
 * sub-TLVs. Throws a {@link ProxyProtocolError} if it is malformed.
 *
 * @example
 * const tlv = stream.proxyHeader?.tlvs.find((t) => t.type === ProxyTlvType.SSL);
 * const ssl = tlv ? parseProxySsl(tlv.value) : null;
 * if (ssl?.certOnConnection && ssl.verified) console.log("client", ssl.cn);
 */
export function parseProxySsl(value: Uint8Array): ProxySsl {
  if (!(value instanceof Uint8Array)) throw typeError(`parseProxySsl() takes the TLV's value, a Buffer (got ${describe(value)}).`);
  const buf = Buffer.from(value.buffer, value.byteOffset, value.byteLength);
  if (buf.length < 5) fail(`Invalid PROXY v2 SSL TLV: ${buf.length} byte(s), fewer than its 5-byte client and verify fields.`);
  const client = buf[0]!;
  const verify = buf.readUInt32BE(1);
  const ssl: ProxySsl = {
    client,
    tls: (client & 0x01) !== 0,
    certOnConnection: (client & 0x02) !== 0,
    certInSession: (client & 0x04) !== 0,
    verify,
    verified: verify === 0,
    version: null,
    cn: null,
    cipher: null,
    sigAlg: null,
    keyAlg: null,
    group: null,
    sigScheme: null,
    clientCert: null,
    tlvs: [],
  };
  eachTlv(buf, 5, "PROXY v2 SSL TLV", (type, valueStart, size) => {
    const sub = Buffer.from(buf.subarray(valueStart, valueStart + size));
    ssl.tlvs.push({ type, value: sub });
    const field = SSL_STRINGS[type as keyof typeof SSL_STRINGS];
    if (field !== undefined) ssl[field] = sub.toString("utf8");
    else if (type === ProxyTlvType.SSL_CLIENT_CERT) ssl.clientCert = sub;
  });
  return ssl;
}

function verifyChecksum(header: Buffer, crcOffset: number): void {
  const expected = header.readUInt32BE(crcOffset);
  const copy = Buffer.from(header);
  copy.fill(0, crcOffset, crcOffset + 4);
  const actual = crc32c(copy);
  if (actual !== expected) {
    fail(
      `Invalid PROXY v2 header: the CRC32C checksum is 0x${expected.toString(16).padStart(8, "0")} but the ` +
        `header's is 0x${actual.toString(16).padStart(8, "0")}.`,
    );
  }
}

/**
 * Decodes a 108-byte `sun_path`: up to the first NUL, or, for a Linux
 * abstract name (leading NUL), up to the trailing NUL padding. All zeros is
 * an unnamed socket (`""`).
 */
function decodeUnixPath(raw: Buffer, name: string): string {
  let bytes: Buffer;
  if (raw[0] === 0) {
    let end = raw.length;
    while (end > 1 && raw[end - 1] === 0) end--;
    if (end === 1) return "";
    bytes = raw.subarray(0, end);
  } else {
    const nul = raw.indexOf(0);
    bytes = raw.subarray(0, nul < 0 ? raw.length : nul);
  }
  if (!isUtf8(bytes)) fail(`Invalid PROXY v2 header: the UNIX ${name} path is not valid UTF-8.`);
  return bytes.toString("utf8");
}

// ---------------------------------------------------------------------------
// Encoders

function checkPort(port: unknown, what: string): number {
  if (typeof port !== "number" || !Number.isInteger(port) || port < 0 || port > 65535) {
    throw numberError(port, `The ${what} port must be an integer from 0 to 65535 (got ${describe(port)}).`);
  }
  return port;
}

/** Validates an IP endpoint and returns its host (IPv6 as 8 words) and port. */
function ipEndpoint(
  value: unknown,
  family: "TCP4" | "TCP6",
  what: string,
): { v4: string; words: number[]; port: number } {
  if (!Array.isArray(value) || (value.length !== 2 && value.length !== 4) || typeof value[0] !== "string") {
    throw typeError(`The ${what} of a ${family} PROXY header must be [host, port] or [host, port, flowinfo, scopeid].`);
  }
  const host: string = value[0];
  const port = checkPort(value[1], what);
  if (family === "TCP4") {
    if (!IPV4_RE.test(host) || !isIPv4(host)) {
      throw typeError(`The ${what} host ${JSON.stringify(host)} is not an IPv4 address, as family TCP4 requires.`, "ERR_INVALID_ARG_VALUE");
    }
    return { v4: host, words: [], port };
  }
  // A zone ("fe80::1%eth0") names an interface of this host: meaningless to
  // the receiver and not carried by the protocol, it is dropped as scopeid is.
  const zone = host.indexOf("%");
  const words = isIPv6(host) ? parseIPv6Text(zone === -1 ? host : host.slice(0, zone)) : null;
  if (words === null) {
    throw typeError(`The ${what} host ${JSON.stringify(host)} is not an IPv6 address, as family TCP6 requires.`, "ERR_INVALID_ARG_VALUE");
  }
  return { v4: "", words, port };
}

/**
 * Encodes a PROXY protocol version 1 (text) header.
 *
 * IPv6 addresses are written in compressed lowercase hex; `flowinfo`,
 * `scopeid` and a zone (`%eth0`) are not carried by the protocol and are dropped.
 *
 * @throws TypeError when an endpoint is missing or does not match the family, or a port is no number.
 * @throws RangeError when a port is not an integer from 0 to 65535.
 */
export function encodeProxyV1(h: ProxyV1Fields): Buffer {
  if (h.family === "UNKNOWN") return Buffer.from("PROXY UNKNOWN\r\n", "latin1");
  if (h.family !== "TCP4" && h.family !== "TCP6") {
    throw typeError(`A PROXY v1 family must be TCP4, TCP6 or UNKNOWN (got ${JSON.stringify(h.family)}).`, "ERR_INVALID_ARG_VALUE");
  }
  const src = ipEndpoint(h.source, h.family, "source");
  const dst = ipEndpoint(h.destination, h.family, "destination");
  const text = (e: { v4: string; words: number[] }): string => (h.family === "TCP4" ? e.v4 : formatIPv6(e.words, false));
  return Buffer.from(`PROXY ${h.family} ${text(src)} ${text(dst)} ${src.port} ${dst.port}\r\n`, "latin1");
}

function inferFamily(source: unknown): ProxyFamily {
  if (source === undefined || source === null) return "UNKNOWN";
  if (typeof source === "string") return "UNIX";
  if (Array.isArray(source) && typeof source[0] === "string") {
    if (isIPv4(source[0])) return "TCP4";
    if (isIPv6(source[0])) return "TCP6";
    throw typeError(`The source host ${JSON.stringify(source[0])} is not an IP address.`, "ERR_INVALID_ARG_VALUE");
  }
  throw typeError("The source of a PROXY v2 header must be [ip, port], an IPv6 4-tuple, or a UNIX path.");
}

function unixPathBytes(value: unknown, what: string): Buffer {
  if (typeof value !== "string") throw typeError(`The ${what} of a UNIX PROXY header must be a path string.`);
  const bytes = Buffer.from(value, "utf8");
  if (bytes.length > UNIX_PATH_BYTES) {
    throw rangeError(`The ${what} path takes ${bytes.length} bytes; at most ${UNIX_PATH_BYTES} fit.`);
  }
  // The receiver cuts a path at its first NUL, and an abstract name at its NUL padding.
  const body = value.startsWith("\0") ? value.slice(1) : value;
  if (value.startsWith("\0") ? body.endsWith("\0") || body === "" : body.includes("\0")) {
    throw typeError(`The ${what} path ${JSON.stringify(value)} has a NUL byte that would not survive decoding.`, "ERR_INVALID_ARG_VALUE");
  }
  return bytes;
}

/**
 * Encodes a PROXY protocol version 2 (binary) header.
 *
 * The address block follows the family: 12 bytes for TCP4, 36 for TCP6,
 * 216 for UNIX (each path NUL-padded to 108 bytes), none for UNKNOWN. TLVs
 * follow it, then the optional CRC32C TLV. As in {@link encodeProxyV1}, an
 * IPv6 zone (`%eth0`), `flowinfo` and `scopeid` are not carried and are dropped.
 *
 * @throws TypeError when an address is missing, of the wrong shape, or does
 *   not match the family, when addresses are given for family UNKNOWN, when
 *   the family and transport are not a pair the specification defines
 *   (`unspec` with other than `UNKNOWN`, or the reverse), or when a port or
 *   TLV type is no number.
 * @throws RangeError for a bad port, TLV type or size (a UNIQUE_ID over
 *   128 bytes, a CRC32C not of 4), or a header longer than the 16-bit length
 *   field allows.
 */
export function encodeProxyV2(h: ProxyV2Fields): Buffer {
  if (h.command !== "PROXY" && h.command !== "LOCAL") {
    throw typeError(`A PROXY v2 command must be PROXY or LOCAL (got ${JSON.stringify(h.command)}).`, "ERR_INVALID_ARG_VALUE");
  }
  const family = h.family ?? (h.command === "LOCAL" ? "UNKNOWN" : inferFamily(h.source));
  const familyIndex = V2_FAMILIES.indexOf(family);
  if (familyIndex < 0) throw typeError(`Unknown PROXY v2 family ${JSON.stringify(family)}.`, "ERR_INVALID_ARG_VALUE");
  const transport = h.transport ?? (family === "UNKNOWN" ? "unspec" : "stream");
  const transportIndex = V2_TRANSPORTS.indexOf(transport);
  if (transportIndex < 0) throw typeError(`Unknown PROXY v2 transport ${JSON.stringify(transport)}.`, "ERR_INVALID_ARG_VALUE");
  // Receivers ignore (nginx) or refuse (HAProxy) such a header: never written.
  if ((family === "UNKNOWN") !== (transport === "unspec")) {
    throw typeError(
      `A PROXY v2 header cannot pair family ${family} with transport ${transport} (byte ` +
        `0x${hex2((familyIndex << 4) | transportIndex)}): UNKNOWN goes with unspec only, and TCP4, TCP6 and UNIX with stream or dgram.`,
      "ERR_INVALID_ARG_VALUE",
    );
  }

  const block = Buffer.alloc(V2_ADDRESS_BLOCK[family]);
  switch (family) {
    case "UNKNOWN":
      // A LOCAL header's addresses are dropped unless a family is given; an
      // explicit UNKNOWN family with addresses is a contradiction.
      if (h.family !== undefined && ((h.source ?? null) !== null || (h.destination ?? null) !== null)) {
        throw typeError("A PROXY v2 header of family UNKNOWN carries no addresses.");
      }
      break;
    case "TCP4": {
      const src = ipEndpoint(h.source, family, "source");
      const dst = ipEndpoint(h.destination, family, "destination");
      src.v4.split(".").forEach((o, i) => (block[i] = Number(o)));
      dst.v4.split(".").forEach((o, i) => (block[4 + i] = Number(o)));
      block.writeUInt16BE(src.port, 8);
      block.writeUInt16BE(dst.port, 10);
      break;
    }
    case "TCP6": {
      const src = ipEndpoint(h.source, family, "source");
      const dst = ipEndpoint(h.destination, family, "destination");
      src.words.forEach((w, i) => block.writeUInt16BE(w, 2 * i));
      dst.words.forEach((w, i) => block.writeUInt16BE(w, 16 + 2 * i));
      block.writeUInt16BE(src.port, 32);
      block.writeUInt16BE(dst.port, 34);
      break;
    }
    case "UNIX":
      unixPathBytes(h.source, "source").copy(block, 0);
      unixPathBytes(h.destination, "destination").copy(block, UNIX_PATH_BYTES);
      break;
  }

  const parts: Buffer[] = [block];
  let crcGiven = false;
  for (const tlv of h.tlvs ?? []) {
    if (typeof tlv !== "object" || tlv === null || !(tlv.value instanceof Uint8Array)) {
      throw typeError("Each TLV must be { type: number, value: Buffer }.");
    }
    if (!Number.isInteger(tlv.type) || tlv.type < 0 || tlv.type > 0xff) {
      throw numberError(tlv.type, `A TLV type must be an integer from 0 to 255 (got ${describe(tlv.type)}).`);
    }
    if (tlv.value.length > V2_LENGTH_MAX) throw rangeError(`A TLV value holds at most ${V2_LENGTH_MAX} bytes.`);
    if (h.checksum === true && tlv.type === ProxyTlvType.CRC32C) {
      throw typeError("Pass either checksum: true or a CRC32C TLV, not both.", "ERR_INVALID_ARG_VALUE");
    }
    // What the parser refuses (as the specification has receivers do) is not written.
    if (tlv.type === ProxyTlvType.CRC32C) {
      if (tlv.value.length !== 4) throw rangeError(`A CRC32C TLV holds 4 bytes (got ${tlv.value.length}).`);
      if (crcGiven) throw typeError("A PROXY v2 header carries at most one CRC32C TLV.", "ERR_INVALID_ARG_VALUE");
      crcGiven = true;
    } else if (tlv.type === ProxyTlvType.UNIQUE_ID && tlv.value.length > UNIQUE_ID_MAX) {
      throw rangeError(`A UNIQUE_ID TLV holds at most ${UNIQUE_ID_MAX} bytes (got ${tlv.value.length}).`);
    }
    const head = Buffer.alloc(3);
    head[0] = tlv.type;
    head.writeUInt16BE(tlv.value.length, 1);
    parts.push(head, Buffer.from(tlv.value));
  }
  if (h.checksum === true) parts.push(Buffer.from([ProxyTlvType.CRC32C, 0, 4, 0, 0, 0, 0]));

  const body = Buffer.concat(parts);
  if (body.length > V2_LENGTH_MAX) {
    throw rangeError(`The PROXY v2 header needs ${body.length} bytes after its fixed part; at most ${V2_LENGTH_MAX} fit.`);
  }
  const fixed = Buffer.alloc(PROXY_V2_HEADER_LENGTH);
  V2_SIGNATURE.copy(fixed, 0);
  fixed[12] = 0x20 | (h.command === "PROXY" ? 1 : 0);
  fixed[13] = (familyIndex << 4) | transportIndex;
  fixed.writeUInt16BE(body.length, 14);
  const out = Buffer.concat([fixed, body]);
  if (h.checksum === true) out.writeUInt32BE(crc32c(out), out.length - 4);
  return out;
}
