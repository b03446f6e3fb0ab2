/**
 * chat: a line-based chat room, Pants' "echo to all" grown up. Every line a
 * client sends goes to every other client. `npm start` runs it on port 4040.
 *
 *   npx tsx examples/chat.ts            # listens on 127.0.0.1:$PORT (default 4040; 0 picks one)
 *   nc localhost 4040                   # then type; /nick NAME, /who, /quit
 */
import { pathToFileURL } from "node:url";
import { Server, Stream } from "pants-ts";

/** Everyone connected, across every server the class is served on. */
const room = new Set<Chat>();

export default class Chat extends Stream {
  nick = "";

  override onConnect(): void {
    this.encoding = "utf8";
    this.readDelimiter = "\n";
    this.bufferSize = 4096; // longer lines close the connection (onOverflowError)
    // A member 256 KiB behind the room (stopped reading) is dropped, not
    // buffered for: the room never waits for, or grows with, its slowest.
    this.writeBufferLimit = 256 * 1024;
    do this.nick = `guest${Chat.nextGuest++}`;
    while ([...room].some((c) => c.nick.toLowerCase() === this.nick)); // someone may have taken it with /nick
    room.add(this);
    this.write(`Welcome to pants-ts chat, ${this.nick}! ${room.size} here. Commands: /nick NAME, /who, /quit\n`);
    this.broadcast(`* ${this.nick} joined`);
  }

  override onRead(line: string): void {
    // Control characters (ANSI escapes, a mid-line \r that forges a line, BEL, NUL) never reach other terminals.
    const text = line.replace(/[\u0000-\u001f\u007f-\u009f]/g, " ").trim();
    if (text === "") return;
    if (text === "/quit") {
      this.write("Bye!\n");
      this.close();
    } else if (text === "/who") {
      this.write(`* here: ${[...room].map((c) => c.nick).join(", ")}\n`);
    } else if (text.startsWith("/nick ")) {
      const nick = text.slice(6).trim().slice(0, 32);
      if (!/^[\w-]+$/.test(nick)) return this.write("* a nick is letters, digits, _ and -\n");
      const lower = nick.toLowerCase();
      for (const other of room) {
        if (other !== this && other.nick.toLowerCase() === lower) return this.write(`* ${nick} is taken\n`);
      }
      this.broadcast(`* ${this.nick} is now ${nick}`);
      this.nick = nick;
      this.write(`* you are now ${nick}\n`);
    } else {
      this.broadcast(`<${this.nick}> ${text}`);
    }
  }

  override onClose(): void {
    if (room.delete(this)) this.broadcast(`* ${this.nick} left`);
  }

  /** Sends a line to everyone else; a client that stopped reading is dropped by writeBufferLimit. */
  broadcast(message: string): void {
    for (const other of room) {
      if (other !== this && other.writable) other.write(message + "\n");
    }
  }

  static nextGuest = 1;
}

// Run directly (not loaded by `pants-ts serve`): listen on PORT, stop on SIGTERM/SIGINT.
if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  const server = new Server(Chat).listen(["127.0.0.1", Number(process.env.PORT ?? 4040)]);
  await server.ready();
  const stop = async (): Promise<void> => {
    await server.shutdown();
    process.exit(0);
  };
  process.once("SIGTERM", stop).once("SIGINT", stop);
  console.log(`chat listening on 127.0.0.1:${server.port} (connect: nc localhost ${server.port})`);
}
