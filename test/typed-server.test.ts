/**
 * Server<S>: a server is typed by its connection class, so its channels and
 * its ConnectionClass need no cast (nor, once declared, a connection's
 * `server`). This file is a type test too: `npm run typecheck` compiles it,
 * each `Equal` line must hold exactly, and each `@ts-expect-error` line is a
 * use that must not compile.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { Server, Stream } from "../src/index.js";
import type { ConnectionClass, StreamOptions } from "../src/index.js";
import { connect, freshEngine, listenLocal } from "./helpers.js";
import type { RawClient } from "./helpers.js";

/** `true` only when A and B are the same type (not merely assignable one way). */
type Equal<A, B> = (<T>() => T extends A ? 1 : 2) extends <T>() => T extends B ? 1 : 2 ? true : false;

/** A chat member: a nick, and lines that go to everyone else in the room. */
class Chat extends Stream {
  nick = "";
  declare server: Server<Chat> | null;

  override onConnect(): void {
    this.encoding = "utf8";
    this.readDelimiter = "\n";
  }

  override onRead(line: string): void {
    if (line.startsWith("/nick ")) {
      this.nick = line.slice(6);
      this.write(`* you are ${this.nick}\n`);
      return;
    }
    // The room is the server's channels, each a Chat: its nick, no cast.
    for (const peer of this.server!.channels.values()) {
      if (peer !== this && peer.writable) peer.write(`<${this.nick}> ${line} (for ${peer.nick})\n`);
    }
  }
}

/** A server-side broadcast, from outside any connection. */
function announce(server: Server<Chat>, text: string): void {
  for (const member of server.channels.values()) if (member.writable) member.write(`* ${member.nick}: ${text}\n`);
}

class ChatServer extends Server<Chat> {
  static override ConnectionClass = Chat;
}

/** Not a connection class. */
class NotAStream {
  nick = "";
}

class Other extends Stream {
  room = 1;
}

/** A connection class the server cannot make: it passes the options only. */
class Needy extends Stream {
  constructor(
    options: StreamOptions,
    readonly room: string,
  ) {
    super(options);
  }
}

/** Connects a client and names it; resolves once the server has said so. */
async function join(port: number, nick: string): Promise<RawClient> {
  const c = await connect(port);
  c.write(`/nick ${nick}\n`);
  const said = `* you are ${nick}\n`;
  assert.equal(await c.readText(said.length), said);
  return c;
}

test("types: new Server(Chat) is a Server<Chat>; a subclass names S and sets the static; the defaults stay Stream", (t) => {
  const engine = freshEngine(t);
  const chat = new Server(Chat, { engine });
  const sub = new ChatServer(undefined, { engine });
  const plain = new Server(undefined, { engine });
  const nullClass = new Server(null, { engine });
  class Untyped extends Server {
    static override ConnectionClass = Chat;
  }
  const untyped = new Untyped(null, { engine });

  const checks: true[] = [
    true satisfies Equal<typeof chat, Server<Chat>>,
    true satisfies Equal<typeof chat.channels, ReadonlyMap<number, Chat>>,
    true satisfies Equal<typeof chat.ConnectionClass, ConnectionClass<Chat>>,
    true satisfies Equal<InstanceType<typeof chat.ConnectionClass>, Chat>,
    true satisfies Equal<typeof sub.channels, ReadonlyMap<number, Chat>>,
    true satisfies Equal<typeof plain, Server<Stream>>,
    true satisfies Equal<typeof plain, Server>,
    true satisfies Equal<typeof nullClass.channels, ReadonlyMap<number, Stream>>,
    // A subclass without a type argument is what it was: its connections are Streams.
    true satisfies Equal<typeof untyped.channels, ReadonlyMap<number, Stream>>,
    true satisfies Equal<Chat["server"], Server<Chat> | null>,
    true satisfies Equal<Other["server"], Server | null>,
  ];
  assert.equal(checks.length, 11);

  // A Server<Chat> is still a Server wherever one is taken.
  const servers: Server[] = [chat, sub, plain, untyped];
  const asPlain: Server = sub;
  const ctor: typeof Server<Stream> = Untyped;
  const typedCtor: typeof Server<Chat> = ChatServer;
  void [servers, asPlain, ctor, typedCtor];

  // What must not compile (the loops never run: no server here listens).
  for (const c of plain.channels.values()) {
    // @ts-expect-error a plain Server's connections are Streams
    void c.nick;
  }
  // @ts-expect-error a Server<Chat> is no Server<Other>
  const other: Server<Other> = chat;
  void other;
  // @ts-expect-error the server makes a connection with its options only
  const needy = new Server(Needy, { engine });
  void needy;
  assert.throws(
    // @ts-expect-error not a connection class
    () => new Server(NotAStream, { engine }),
    (err: Error) => err instanceof TypeError && /must be Stream or a subclass of it/.test(err.message),
  );
  // @ts-expect-error the class attribute is a connection class too
  class WrongStatic extends Server<Chat> {
    static override ConnectionClass = NotAStream;
  }
  // ... and checked at run time as the argument is (it was taken as it was, to fail at the first accept).
  assert.throws(
    () => new WrongStatic(null, { engine }),
    (err: Error) => err instanceof TypeError && /^WrongStatic\.ConnectionClass must be Stream or a subclass of it/.test(err.message),
  );

  // At run time the types match what the servers make.
  assert.equal(chat.ConnectionClass, Chat);
  assert.equal(sub.ConnectionClass, Chat);
  assert.equal(plain.ConnectionClass, Stream);
  assert.equal(nullClass.ConnectionClass, Stream);
  assert.equal(untyped.ConnectionClass, Chat);
  for (const s of [chat, sub, plain, nullClass, untyped, needy]) s.close();
});

test("a chat room broadcasts over typed channels: each connection reads its peers' nicks, the server each member's", async (t) => {
  const engine = freshEngine(t);
  const server = new Server(Chat, { engine });
  const port = await listenLocal(server, t);
  const ann = await join(port, "ann");
  const bob = await join(port, "bob");
  const cyd = await join(port, "cyd");
  t.after(() => [ann, bob, cyd].forEach((c) => c.destroy()));

  assert.deepEqual([...server.channels.values()].map((c) => c.nick).sort(), ["ann", "bob", "cyd"]);
  assert.ok([...server.channels.values()].every((c) => c instanceof Chat && c.server === server));

  ann.write("hello\n");
  for (const [client, nick] of [[bob, "bob"], [cyd, "cyd"]] as const) {
    const line = `<ann> hello (for ${nick})\n`;
    assert.equal(await client.readText(line.length), line);
  }

  announce(server, "closing soon");
  for (const [client, nick] of [[ann, "ann"], [bob, "bob"], [cyd, "cyd"]] as const) {
    const line = `* ${nick}: closing soon\n`;
    assert.equal(await client.readText(line.length), line);
  }
  assert.equal(ann.received.length, 0, "ann hears no echo of her own line");
});

test("a Server<Chat> subclass that sets the static ConnectionClass serves Chats, its channels typed so", async (t) => {
  const engine = freshEngine(t);
  const server = new ChatServer(null, { engine });
  const port = await listenLocal(server, t);
  const ann = await join(port, "ann");
  const bob = await join(port, "bob");
  t.after(() => [ann, bob].forEach((c) => c.destroy()));

  bob.write("hi ann\n");
  const line = "<bob> hi ann (for ann)\n";
  assert.equal(await ann.readText(line.length), line);
  announce(server, "welcome");
  for (const [client, nick] of [[ann, "ann"], [bob, "bob"]] as const) {
    const said = `* ${nick}: welcome\n`;
    assert.equal(await client.readText(said.length), said);
  }
});
