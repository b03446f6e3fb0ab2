/**
 * The baseline of the `redis` scenario: a small Redis-compatible server
 * (RESP2) written by hand on raw `node:net`, the counterpart of
 * examples/resp-server.ts with the same data model and the same limits:
 *
 *   PING [msg]  ECHO msg  SET key value [EX s|PX ms] [NX|XX]  GET key
 *   DEL key...  EXISTS key...  COMMAND (empty)  CONFIG GET (empty)  QUIT
 *
 * Requests are parsed incrementally on "data" events: `*N` and `$len` header
 * lines found with `Buffer#indexOf("\r\n")`, bulk strings taken as views of
 * the chunk; a bulk string that spans reads is collected in pieces and
 * joined once. Inline commands (a plain line) work too. Header and inline
 * lines are limited to 64 KiB, bulk strings to 512 MiB, a command to 1 Mi
 * arguments; a violation gets `-ERR Protocol error: ...` and the connection
 * closes, as in Redis.
 *
 * Replies are written with one `socket.write` each, between `cork()` and
 * `uncork()` around every read, so the replies to one read (16 with
 * redis-benchmark -P 16) leave in one writev, as with pants-ts, which sends
 * everything written in one turn of the event loop in one system call.
 *
 * Environment: PORT (0: any), HOST (default 127.0.0.1); prints "READY <port>".
 */
import net from "node:net";
import { announce } from "./common.js";
// The example's inline-command splitter (Redis' quoting rules), so both servers do the same job per PING_INLINE.
import { splitInline } from "../../examples/resp-server.js";

const MAX_BULK_LEN = 512 * 1024 * 1024; // Redis' proto-max-bulk-len
const MAX_MULTIBULK = 1024 * 1024; // arguments of one command
const MAX_LINE = 64 * 1024; // inline commands and headers

const CR = 0x0d;
const LF = 0x0a;
const STAR = 0x2a;
const DOLLAR = 0x24;
const CRLF = Buffer.from("\r\n", "latin1");

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
    db.delete(name);
    return undefined;
  }
  return entry;
}

function store(key: Buffer, value: Buffer, expiresAt = Infinity): void {
  db.set(key.toString("latin1"), { value: Buffer.from(value), expiresAt }); // a copy, not a view of the read buffer
}

// --- replies (RESP2) ---
type Reply = string | Buffer;
const OK = "+OK\r\n";
const NIL = "$-1\r\n";
const EMPTY_ARRAY = "*0\r\n";
const int = (n: number): Reply => `:${n}\r\n`;
const bulk = (b: Buffer | undefined): Reply => (b === undefined ? NIL : Buffer.concat([Buffer.from(`$${b.length}\r\n`), b, CRLF]));

/** Thrown by a command to reply `-ERR message`. */
class ReplyError extends Error {}

function wrongArity(name: string): never {
  throw new ReplyError(`wrong number of arguments for '${name}' command`);
}

function integer(arg: Buffer): number {
  const text = arg.toString("latin1");
  const n = Number(text);
  if (!/^-?(0|[1-9]\d*)$/.test(text) || !Number.isSafeInteger(n)) throw new ReplyError("value is not an integer or out of range");
  return n;
}

/** SET key value [EX seconds|PX milliseconds] [NX|XX] */
function set(a: Buffer[]): Reply {
  let ttlMs: number | null = null;
  let condition: "NX" | "XX" | null = null;
  for (let i = 3; i < a.length; i++) {
    const option = a[i]!.toString().toUpperCase();
    if ((option === "NX" || option === "XX") && condition === null) condition = option;
    else if ((option === "EX" || option === "PX") && ttlMs === null && i + 1 < a.length) {
      ttlMs = integer(a[++i]!) * (option === "EX" ? 1000 : 1);
      if (ttlMs <= 0 || !Number.isSafeInteger(ttlMs)) throw new ReplyError("invalid expire time in 'set' command");
    } else throw new ReplyError("syntax error");
  }
  const exists = lookup(a[1]!) !== undefined;
  if ((condition === "NX" && exists) || (condition === "XX" && !exists)) return NIL;
  store(a[1]!, a[2]!, ttlMs === null ? Infinity : Date.now() + ttlMs);
  return OK;
}

/** Commands with their arity as in Redis (n: exactly n words, -n: at least n). */
const commands: Record<string, { arity: number; run(args: Buffer[]): Reply }> = {
  ping: { arity: -1, run: (a) => (a.length > 2 ? wrongArity("ping") : a[1] ? bulk(a[1]) : "+PONG\r\n") },
  echo: { arity: 2, run: (a) => bulk(a[1]) },
  get: { arity: 2, run: (a) => bulk(lookup(a[1]!)?.value) },
  set: { arity: -3, run: set },
  del: { arity: -2, run: (a) => int(a.slice(1).filter((k) => lookup(k) !== undefined && db.delete(k.toString("latin1"))).length) },
  exists: { arity: -2, run: (a) => int(a.slice(1).filter((k) => lookup(k) !== undefined).length) },
  quit: { arity: -1, run: () => OK },
  command: { arity: -1, run: () => EMPTY_ARRAY },
  config: {
    arity: -2,
    run: (a) => {
      const sub = a[1]!.toString();
      if (sub.toLowerCase() !== "get") throw new ReplyError(`unknown subcommand '${sub}'. Try CONFIG HELP.`);
      return a.length < 3 ? wrongArity("config|get") : EMPTY_ARRAY;
    },
  },
};

/** The integer after the `*` or `$` of a header line, or null. */
function header(line: Buffer): number | null {
  const text = line.toString("latin1", 1);
  return /^(0|-?[1-9]\d{0,15})$/.test(text) ? Number(text) : null;
}

/** One client connection: the parser's state between reads. */
class RespConnection {
  readonly #socket: net.Socket;
  /** The arguments of the command being read. */
  #args: Buffer[] = [];
  /** Bulk strings of the current command still to come (0: between commands). */
  #pending = 0;
  /** Length of the bulk string being read, -1 while a header or inline line is expected. */
  #bulkLen = -1;
  /** Unparsed bytes: the start of a line. */
  #rest: Buffer | null = null;
  /** A bulk string arriving over several reads: its pieces so far. */
  #pieces: Buffer[] = [];
  #piecesBytes = 0;
  #closed = false;

  constructor(socket: net.Socket) {
    this.#socket = socket;
    socket.on("data", (chunk: Buffer) => this.#onData(chunk));
  }

  #onData(chunk: Buffer): void {
    if (this.#closed) return;
    let data: Buffer;
    if (this.#pieces.length > 0) {
      this.#pieces.push(chunk);
      this.#piecesBytes += chunk.length;
      if (this.#piecesBytes < this.#bulkLen + 2) return; // still incomplete: no copy yet
      data = Buffer.concat(this.#pieces, this.#piecesBytes);
      this.#pieces = [];
      this.#piecesBytes = 0;
    } else {
      data = this.#rest === null ? chunk : Buffer.concat([this.#rest, chunk]);
      this.#rest = null;
    }
    this.#socket.cork();
    try {
      const used = this.#consume(data);
      if (used < 0 || used === data.length) return;
      const left = data.subarray(used);
      if (this.#bulkLen >= 0) {
        this.#pieces = [left];
        this.#piecesBytes = left.length;
      } else if (left.length > MAX_LINE) {
        this.#protocolError(this.#pending > 0 ? "too big bulk count string" : "too big inline request");
      } else {
        this.#rest = left;
      }
    } finally {
      this.#socket.uncork();
    }
  }

  /** Parses and runs every complete command in `data`; returns the bytes used, or -1 once the connection is closing. */
  #consume(data: Buffer): number {
    let at = 0;
    while (at < data.length && !this.#closed) {
      if (this.#bulkLen >= 0) {
        const end = at + this.#bulkLen;
        if (end + 2 > data.length) return at;
        if (data[end] !== CR || data[end + 1] !== LF) return this.#protocolError("expected CRLF after bulk string");
        this.#args.push(data.subarray(at, end));
        at = end + 2;
        this.#bulkLen = -1;
        if (--this.#pending === 0) this.#execute();
        continue;
      }
      const eol = data.indexOf(CRLF, at);
      if (eol === -1) return at;
      if (eol - at > MAX_LINE) return this.#protocolError(this.#pending > 0 ? "too big bulk count string" : "too big inline request");
      const line = data.subarray(at, eol);
      at = eol + 2;
      if (this.#pending > 0) {
        if (line[0] !== DOLLAR) return this.#protocolError(`expected '$', got '${line.toString("latin1", 0, 1)}'`);
        const len = header(line);
        if (len === null || len < 0 || len > MAX_BULK_LEN) return this.#protocolError("invalid bulk length");
        this.#bulkLen = len;
      } else if (line[0] === STAR) {
        const count = header(line);
        if (count === null || count > MAX_MULTIBULK) return this.#protocolError("invalid multibulk length");
        this.#pending = Math.max(count, 0); // *0 and *-1 are empty commands: ignored
      } else {
        const words = splitInline(line);
        if (words === null) return this.#protocolError("unbalanced quotes in request");
        if (words.length === 0) continue; // an empty line
        this.#args = words;
        this.#execute();
      }
    }
    return this.#closed ? -1 : at;
  }

  #execute(): void {
    const args = this.#args;
    this.#args = [];
    const name = args[0] ?? Buffer.alloc(0);
    const lower = name.toString().toLowerCase();
    const command = Object.hasOwn(commands, lower) ? commands[lower] : undefined;
    try {
      if (command === undefined) {
        let shown = "";
        for (const arg of args.slice(1)) if (shown.length < 128) shown += `'${arg.toString().slice(0, 128 - shown.length)}' `;
        throw new ReplyError(`unknown command '${name.toString().slice(0, 128)}', with args beginning with: ${shown}`);
      }
      if (command.arity > 0 ? args.length !== command.arity : args.length < -command.arity) wrongArity(lower);
      this.#socket.write(command.run(args));
      if (lower === "quit") this.#close();
    } catch (err) {
      if (!(err instanceof ReplyError)) throw err;
      this.#socket.write(`-ERR ${err.message.replace(/[\r\n]/g, " ")}\r\n`);
    }
  }

  #protocolError(message: string): -1 {
    this.#socket.write(`-ERR Protocol error: ${message}\r\n`);
    this.#close();
    return -1;
  }

  /** Sends what is written, then a FIN; reads nothing more. */
  #close(): void {
    this.#closed = true;
    this.#pieces = [];
    this.#rest = null;
    this.#socket.end();
  }
}

const port = Number(process.env["PORT"] ?? "0");
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  process.stderr.write(`resp-raw: bad PORT ${JSON.stringify(process.env["PORT"])}\n`);
  process.exit(2);
}
const server = net.createServer((socket) => {
  socket.setNoDelay(true);
  socket.on("error", () => {}); // resets from clients are normal; the socket closes
  new RespConnection(socket);
});
server.listen({ host: process.env["HOST"] || "127.0.0.1", port, backlog: 1024 }, () => {
  announce((server.address() as net.AddressInfo).port);
});
