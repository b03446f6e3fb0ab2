/**
 * The client side of each framing: what a well-behaved client (the canary,
 * the warm-up) sends, and what must come back. Every server in server.ts
 * echoes a frame as the bytes it arrived as, so the expected reply is the
 * request itself; the canary compares them byte for byte.
 */
import { NetStruct, Struct } from "pants-ts";
import { INT_FRAME, NETSTRUCT_FORMAT, STRUCT_HEADER } from "./protocol.js";
import type { Framing } from "./protocol.js";
import { Rng } from "./util.js";

export interface Codec {
  readonly name: string;
  /** Request number `seq` (a whole frame). */
  request(seq: number): Buffer;
}

const STRUCT = new Struct(STRUCT_HEADER);
const NETSTRUCT = new NetStruct(NETSTRUCT_FORMAT);

/** The codec of a framing ("echo", "big" and "faulty" servers frame by "\n": use "lf"). */
export function codecFor(framing: Framing | "utf8", seed = 1): Codec {
  const rng = new Rng(seed);
  switch (framing) {
    case "lf":
    case "regex":
      return { name: framing, request: (seq) => Buffer.from(`canary ${seq} ${rng.word(rng.int(1, 60))}\n`, "latin1") };
    case "utf8":
      // Valid multi-byte UTF-8 (2, 3 and 4 bytes per character) round trips as text.
      return { name: framing, request: (seq) => Buffer.from(`canary ${seq} é✓😀 ${rng.word(rng.int(1, 40))}\n`, "utf8") };
    case "crlf2":
      return { name: framing, request: (seq) => Buffer.from(`GET /canary/${seq} HTTP/1.1\r\nHost: ${rng.word(8)}\r\n\r\n`, "latin1") };
    case "int":
      return {
        name: framing,
        request: (seq) => {
          const b = rng.bytes(INT_FRAME);
          b.writeUInt32BE(seq >>> 0, 0);
          return b;
        },
      };
    case "regex-anchored":
      return { name: framing, request: (seq) => Buffer.from(`canary=${seq};`, "latin1") };
    case "struct":
      return {
        name: framing,
        request: (seq) => {
          const body = rng.bytes(rng.int(0, 64));
          return Buffer.concat([STRUCT.pack(seq & 0xffff, body.length), body]);
        },
      };
    case "netstruct":
      return { name: framing, request: (seq) => NETSTRUCT.pack(seq & 0xffff, rng.bytes(rng.int(0, 64))) };
    case "decoder":
      return {
        name: framing,
        request: () => {
          const body = rng.bytes(rng.int(0, 64));
          const head = Buffer.alloc(3);
          head[0] = 1;
          head.writeUInt16BE(body.length, 1);
          return Buffer.concat([head, body]);
        },
      };
  }
}
