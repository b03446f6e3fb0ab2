/**
 * resp-server: a small Redis-compatible server speaking RESP2, the Redis
 * protocol: enough for redis-cli, redis-benchmark and `redis-cli --pipe`.
 *
 *   PING [msg]  ECHO msg  SET key value [EX s|PX ms] [NX|XX]  GET key
 *   DEL key...  EXISTS key...  INCR key  MGET key...  MSET key value...
 *   EXPIRE key s  TTL key  FLUSHALL  QUIT  COMMAND (empty)  CONFIG GET (empty)
 *
 *   npx tsx examples/resp-server.ts     # listens on 127.0.0.1:$PORT (default 6380; 0 picks a free port)
 *   redis-cli -p 6380 set greeting hello
 *   redis-cli -p 6380 get greeting
 *   printf 'PING\r\n' | nc -q1 localhost 6380      # inline commands work too
 *
 * Framing is Pants' way: lines ("\r\n", or "\n" alone) for the `*N` and `$len` headers, then
 * the integer delimiter `len + 2` for each bulk string (its body and CRLF),
 * then lines again, switched inside onRead. Malformed input gets
 * `-ERR Protocol error: ...` and the connection closes, as Redis does.
 */
import { pathToFileURL } from "node:url";
import { Server, Stream } from "pants-ts";
import type { BufferOverflowError } from "pants-ts";

const MAX_BULK_LEN = 512 * 1024 * 1024; // Redis' proto-max-bulk-len
// Arguments of one command. Redis allows 1M; each argument held here costs
// about 130 bytes of JS heap besides its bytes, so a few dozen connections of
// a million empty arguments each would exhaust the heap: 64K is plenty.
const MAX_MULTIBULK = 64 * 1024;
const MAX_LINE = 64 * 1024; // inline commands and headers (bufferSize)

/** A value and when it expires (Date.now() ms; Infinity: never). */
interface Entry {
  value: Buffer;
  expiresAt: number;
}

/** The database, shared by every connection. Keys are binary-safe latin1 strings. */
const db = new Map<string, Entry>();

function lookup(key: Buffer): Entry | undefined {
  const name = key.toString("latin1");
  const entry = db.get(name);
  if (entry !== undefined && entry.expiresAt <= Date.now()) {
    db.delete(name); // expired: lazily removed on access
    return undefined;
  }
  return entry;
}

function store(key: Buffer, value: Buffer, expiresAt = Infinity): void {
  db.set(key.toString("latin1"), { value: Buffer.from(value), expiresAt }); // a copy, not a view of the read buffer
}

// --- replies (RESP2) ---
/**
 * A reply, or its parts in order. Values over JOIN_MAX go out as they are
 * stored, not copied into one buffer: an MGET of one 1 MiB value 64K times
 * would be 64 GiB, built before writeBufferLimit could act.
 */
type Reply = string | Buffer | readonly Reply[];
const JOIN_MAX = 1024; // a bulk string this size or less is one Buffer (one write)
const OK = "+OK\r\n";
const NIL = "$-1\r\n";
const CRLF = Buffer.from("\r\n");
const int = (n: number | bigint): Reply => `:${n}\r\n`;
const bulk = (b: Buffer | undefined): Reply => {
  if (b === undefined) return NIL;
  const head = `$${b.length}\r\n`;
  return b.length <= JOIN_MAX ? Buffer.concat([Buffer.from(head), b, CRLF]) : [head, b, CRLF];
};
const array = (items: Reply[]): Reply => [`*${items.length}\r\n`, ...items];

/** Thrown by a command to reply `-ERR message`. */
class ReplyError extends Error {}

function integer(arg: Buffer): number {
  const text = arg.toString("latin1");
  const n = Number(text);
  // As Redis' string2ll: no sign on 0 ("-0"), no leading zeros or spaces.
  if (!/^(0|-?[1-9]\d*)$/.test(text) || !Number.isSafeInteger(n)) throw new ReplyError("value is not an integer or out of range");
  return n;
}

// --- commands: arity as in Redis (n: exactly n words, -n: at least n) ---
interface Command {
  arity: number;
  run(args: Buffer[]): Reply;
}

const commands: Record<string, Command> = {
  ping: { arity: -1, run: (a) => (a.length > 2 ? wrongArity("ping") : a[1] ? bulk(a[1]) : "+PONG\r\n") },
  echo: { arity: 2, run: (a) => bulk(a[1]) },
  get: { arity: 2, run: (a) => bulk(lookup(a[1])?.value) },
  set: { arity: -3, run: set },
  del: { arity: -2, run: (a) => int(a.slice(1).filter((k) => lookup(k) !== undefined && db.delete(k.toString("latin1"))).length) },
  exists: { arity: -2, run: (a) => int(a.slice(1).filter((k) => lookup(k) !== undefined).length) },
  incr: { arity: 2, run: incr },
  mget: { arity: -2, run: (a) => array(a.slice(1).map((k) => bulk(lookup(k)?.value))) },
  mset: {
    arity: -3,
    run: (a) => {
      if (a.length % 2 === 0) return wrongArity("mset");
      for (let i = 1; i < a.length; i += 2) store(a[i], a[i + 1]);
      return OK;
    },
  },
  expire: {
    arity: 3,
    run: (a) => {
      const seconds = integer(a[2]);
      const entry = lookup(a[1]);
      if (entry === undefined) return int(0);
      if (seconds <= 0) db.delete(a[1].toString("latin1"));
      else entry.expiresAt = Date.now() + seconds * 1000;
      return int(1);
    },
  },
  ttl: {
    arity: 2,
    run: (a) => {
      const entry = lookup(a[1]);
      if (entry === undefined) return int(-2);
      return int(entry.expiresAt === Infinity ? -1 : Math.round((entry.expiresAt - Date.now()) / 1000));
    },
  },
  flushall: {
    arity: -1,
    run: (a) => {
      if (a.length > 2 || (a[1] && !/^(a?sync)$/i.test(a[1].toString()))) throw new ReplyError("syntax error");
      db.clear();
      return OK;
    },
  },
  quit: { arity: -1, run: () => OK }, // execute() closes the connection after the reply
  command: { arity: -1, run: () => "*0\r\n" },
  config: {
    arity: -2,
    run: (a) => {
      const sub = a[1].toString();
      if (sub.toLowerCase() !== "get") throw new ReplyError(`unknown subcommand '${sub}'. Try CONFIG HELP.`);
      return a.length < 3 ? wrongArity("config|get") : "*0\r\n";
    },
  },
};

function wrongArity(name: string): never {
  throw new ReplyError(`wrong number of arguments for '${name}' command`);
}

/** SET key value [EX seconds|PX milliseconds] [NX|XX] */
function set(a: Buffer[]): Reply {
  let ttlMs: number | null = null;
  let condition: "NX" | "XX" | null = null;
  for (let i = 3; i < a.length; i++) {
    const option = a[i].toString().toUpperCase();
    if ((option === "NX" || option === "XX") && condition === null) condition = option;
    else if ((option === "EX" || option === "PX") && ttlMs === null && i + 1 < a.length) {
      ttlMs = integer(a[++i]) * (option === "EX" ? 1000 : 1);
      if (ttlMs <= 0 || !Number.isSafeInteger(ttlMs)) throw new ReplyError("invalid expire time in 'set' command");
    } else throw new ReplyError("syntax error");
  }
  const exists = lookup(a[1]) !== undefined;
  if ((condition === "NX" && exists) || (condition === "XX" && !exists)) return NIL;
  store(a[1], a[2], ttlMs === null ? Infinity : Date.now() + ttlMs);
  return OK;
}

/** INCR key: 64-bit signed, the TTL is kept. */
function incr(a: Buffer[]): Reply {
  const entry = lookup(a[1]);
  const text = entry?.value.toString("latin1") ?? "0";
  if (!/^(0|-?[1-9]\d{0,19})$/.test(text) || BigInt(text) >= 2n ** 63n || BigInt(text) < -(2n ** 63n)) {
    throw new ReplyError("value is not an integer or out of range");
  }
  const next = BigInt(text) + 1n;
  if (next >= 2n ** 63n) throw new ReplyError("increment or decrement would overflow");
  if (entry === undefined) store(a[1], Buffer.from(String(next)));
  else entry.value = Buffer.from(String(next));
  return int(next);
}

export default class RespConnection extends Stream {
  /** The arguments of the command being read, and how many bulk strings are still to come. */
  args: Buffer[] = [];
  pending = 0;

  override onConnect(): void {
    this.readDelimiter = "\n"; // "\r\n", or "\n" alone as Redis accepts for inline commands (`echo PING | nc`)
    this.bufferSize = MAX_LINE;
  }

  /** A header or inline line (the delimiter is "\n"), or a bulk string with its CRLF (an integer delimiter). */
  override onRead(data: Buffer): void {
    if (typeof this.readDelimiter === "number") {
      const len = data.length - 2;
      if (data[len] !== 0x0d || data[len + 1] !== 0x0a) return this.protocolError("expected CRLF after bulk string");
      this.args.push(data.subarray(0, len));
      this.readDelimiter = "\n"; // back to lines: the rest of the buffer is framed by it at once
      if (--this.pending === 0) this.execute();
      return;
    }
    const frame = data[data.length - 1] === 0x0d ? data.subarray(0, data.length - 1) : data;
    if (this.pending > 0) {
      if (frame[0] !== 0x24 /* $ */) return this.protocolError(`expected '$', got '${frame.toString("latin1", 0, 1)}'`);
      const len = header(frame);
      if (len === null || len < 0 || len > MAX_BULK_LEN) return this.protocolError("invalid bulk length");
      this.readDelimiter = len + 2; // exactly the body and its CRLF
    } else if (frame[0] === 0x2a /* * */) {
      const count = header(frame);
      if (count === null || count > MAX_MULTIBULK) return this.protocolError("invalid multibulk length");
      this.pending = Math.max(count, 0); // *0 and *-1 are empty commands: ignored
    } else {
      const words = splitInline(frame);
      if (words === null) return this.protocolError("unbalanced quotes in request");
      if (words.length === 0) return; // an empty line
      this.args = words;
      this.execute();
    }
  }

  execute(): void {
    const [name = Buffer.alloc(0), ...rest] = this.args;
    const lower = name.toString().toLowerCase();
    const command = Object.hasOwn(commands, lower) ? commands[lower] : undefined;
    try {
      if (command === undefined) {
        let shown = "";
        for (const arg of rest) if (shown.length < 128) shown += `'${arg.toString().slice(0, 128 - shown.length)}' `;
        throw new ReplyError(`unknown command '${name.toString().slice(0, 128)}', with args beginning with: ${shown}`);
      }
      const n = rest.length + 1;
      if (command.arity > 0 ? n !== command.arity : n < -command.arity) wrongArity(lower);
      this.send(command.run(this.args));
      if (lower === "quit") this.close(); // after the reply has been sent
    } catch (err) {
      if (!(err instanceof ReplyError)) throw err; // a bug: onError logs it and closes this connection
      this.write(`-ERR ${err.message.replace(/[\r\n]/g, " ")}\r\n`);
    } finally {
      this.args = [];
    }
  }

  /** Writes a reply's parts in order, and no more once one passed writeBufferLimit and closed the connection. */
  send(reply: Reply): void {
    if (typeof reply !== "string" && !Buffer.isBuffer(reply)) for (const part of reply) this.send(part);
    else if (this.writable) this.write(reply);
  }

  protocolError(message: string): void {
    this.write(`-ERR Protocol error: ${message}\r\n`);
    this.close(); // sends the error first
  }

  /** A frame over bufferSize is a protocol error; replies over writeBufferLimit (a client that stopped reading) close at once. */
  override onOverflowError(err: BufferOverflowError): void {
    if (err.direction === "write") return super.onOverflowError(err);
    this.protocolError(this.pending > 0 ? "too big bulk count string" : "too big inline request");
  }
}

const isSpace = (c: number): boolean => c === 0x20 || (c >= 0x09 && c <= 0x0d); // C's isspace: space \t \n \v \f \r
const isHex = (c: number): boolean => (c >= 0x30 && c <= 0x39) || ((c | 0x20) >= 0x61 && (c | 0x20) <= 0x66);
/** The bytes `\n` `\r` `\t` `\b` `\a` stand for inside double quotes; any other escaped byte stands for itself. */
const ESCAPES: Record<number, number> = { 0x6e: 0x0a, 0x72: 0x0d, 0x74: 0x09, 0x62: 0x08, 0x61: 0x07 };

/**
 * An inline command's words, split as Redis' sdssplitargs does: spaces and
 * tabs separate; "double quotes" take the escapes \n \r \t \b \a \xHH (any
 * other escaped byte is itself); 'single quotes' take \' only. Null when a
 * quote is not closed, or a closing quote is followed by other than a space.
 */
export function splitInline(line: Buffer): Buffer[] | null {
  const words: Buffer[] = [];
  const word = Buffer.allocUnsafe(line.length); // a word is never longer than its line
  let i = 0;
  for (;;) {
    while (i < line.length && isSpace(line[i])) i++;
    if (i === line.length) return words;
    let n = 0;
    let quote = 0; // the open quote's byte, or 0
    for (;;) {
      if (i === line.length) {
        if (quote !== 0) return null;
        break;
      }
      const c = line[i++];
      if (quote === 0) {
        if (c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d) break;
        if (c === 0x22 || c === 0x27) quote = c;
        else word[n++] = c;
      } else if (c === quote) {
        if (i < line.length && !isSpace(line[i])) return null;
        break;
      } else if (c === 0x5c /* \ */ && i < line.length) {
        const next = line[i];
        if (quote === 0x27) {
          word[n++] = next === 0x27 ? 0x27 : c;
          if (next === 0x27) i++;
        } else if (next === 0x78 /* x */ && i + 2 < line.length && isHex(line[i + 1]) && isHex(line[i + 2])) {
          word[n++] = parseInt(line.toString("latin1", i + 1, i + 3), 16);
          i += 3;
        } else {
          word[n++] = ESCAPES[next] ?? next;
          i++;
        }
      } else {
        word[n++] = c;
      }
    }
    words.push(Buffer.from(word.subarray(0, n)));
  }
}

/** The integer after the `*` or `$` of a header line, or null (as Redis' string2ll: no "-0", no leading zeros). */
function header(line: Buffer): number | null {
  const text = line.toString("latin1", 1);
  return /^(0|-?[1-9]\d{0,15})$/.test(text) ? Number(text) : null;
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  const server = new Server(RespConnection).listen(["127.0.0.1", Number(process.env.PORT ?? 6380)]);
  await server.ready();
  const stop = async (): Promise<void> => {
    await server.shutdown();
    process.exit(0);
  };
  process.once("SIGTERM", stop).once("SIGINT", stop); // before the line below: a signal right after it is handled
  const [host, port] = server.localAddress as [string, number];
  console.log(`resp-server listening on ${host}:${port}`);
}
