/**
 * line-kv: a tiny key-value store with a line protocol, shared by every
 * client. Commands are case-insensitive; keys are one word; a value is the
 * rest of the line.
 *
 *   SET key value   -> OK
 *   GET key         -> VALUE value | NOT_FOUND
 *   DEL key         -> OK | NOT_FOUND
 *   KEYS            -> VALUE key1 key2 ... (sorted; just VALUE when empty)
 *   QUIT            -> OK, then the server closes the connection
 *   anything else   -> ERR ...   (lines over 4 KiB: ERR line too long, then close;
 *                                  bytes that are not UTF-8: the connection closes)
 *
 *   npx tsx examples/line-kv.ts         # listens on 127.0.0.1:$PORT (default 4042; 0 picks a free port)
 *   nc localhost 4042                   # then type: SET greeting hello world / GET greeting
 *   printf 'SET a 1\nGET a\n' | nc -q1 localhost 4042
 */
import { pathToFileURL } from "node:url";
import { Server, Stream } from "pants-ts";
import type { BufferOverflowError } from "pants-ts";

const store = new Map<string, string>();

export default class LineKv extends Stream {
  override onConnect(): void {
    this.encoding = "utf8"; // onRead gets strings; invalid UTF-8 is a read error (closes)
    this.readDelimiter = "\n";
    this.bufferSize = 4096;
  }

  override onRead(line: string): void {
    const text = line.replace(/\r$/, "").trim();
    if (text === "") return;
    const [, word = "", key = "", rest = ""] = /^(\S+)\s*(\S*)\s*(.*)$/.exec(text) ?? [];
    const command = word.toUpperCase();
    const args = key === "" ? 0 : rest === "" ? 1 : 2;
    if (command === "SET" && args === 2) {
      store.set(key, rest);
      this.reply("OK");
    } else if (command === "GET" && args === 1) {
      const value = store.get(key);
      this.reply(value === undefined ? "NOT_FOUND" : `VALUE ${value}`);
    } else if (command === "DEL" && args === 1) {
      this.reply(store.delete(key) ? "OK" : "NOT_FOUND");
    } else if (command === "KEYS" && args === 0) {
      this.reply(["VALUE", ...[...store.keys()].sort()].join(" "));
    } else if (command === "QUIT" && args === 0) {
      this.reply("OK");
      this.close(); // after the reply is sent
    } else if (USAGE[command] !== undefined) {
      this.reply(`ERR usage: ${USAGE[command]}`);
    } else {
      this.reply(`ERR unknown command '${word.slice(0, 32)}'`);
    }
  }

  /** A line over 4 KiB gets an error; replies over writeBufferLimit (a client that stopped reading) close at once. */
  override onOverflowError(err: BufferOverflowError): void {
    if (err.direction === "write") return super.onOverflowError(err);
    this.reply("ERR line too long");
    this.close();
  }

  reply(line: string): void {
    this.write(line + "\n");
  }
}

const USAGE: Record<string, string> = { SET: "SET key value", GET: "GET key", DEL: "DEL key", KEYS: "KEYS", QUIT: "QUIT" };

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  const server = new Server(LineKv).listen(["127.0.0.1", Number(process.env.PORT ?? 4042)]);
  await server.ready();
  const stop = async (): Promise<void> => {
    await server.shutdown();
    process.exit(0);
  };
  process.once("SIGTERM", stop).once("SIGINT", stop); // before the line below: a signal right after it is handled
  const [host, port] = server.localAddress as [string, number];
  console.log(`line-kv listening on ${host}:${port}`);
}
