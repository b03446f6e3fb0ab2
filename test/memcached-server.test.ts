/**
 * examples/memcached-server.ts, run as its own process: driven by the
 * libmemcached command-line tools (whichever of their names this system
 * has: memccp or memcp, memccat or memcat, ...) and, for every command of
 * the text protocol, by raw sockets with exact replies.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { connect, sleep, tempDir } from "./helpers.js";
import type { RawClient } from "./helpers.js";
import { stalledReader, startExample as launch } from "./example-process.js";


/** The first of `names` that runs on this system (libmemcached renamed its tools over time), or null. */
function tool(...names: string[]): string | null {
  return names.find((name) => spawnSync(name, ["--version"], { stdio: "ignore" }).status === 0) ?? null;
}
const tools = {
  cp: tool("memccp", "memcp"),
  cat: tool("memccat", "memcat"),
  rm: tool("memcrm", "memrm"),
  flush: tool("memcflush", "memflush"),
  exist: tool("memcexist", "memexist"),
  touch: tool("memctouch", "memtouch"),
  ping: tool("memcping", "memping"),
  stat: tool("memcstat", "memstat"),
};
const missing = (name: string, program: string | null): string | false =>
  program === null ? `the libmemcached tool ${name} is not installed (Debian: apt-get install libmemcached-tools)` : false;

/** Runs a program; resolves with its exit code and output (never rejects on a non-zero exit). */
function run(program: string, args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    execFile(program, args, { timeout: 30_000 }, (error, stdout, stderr) => {
      if (error && typeof error.code !== "number") reject(error);
      else resolve({ code: error ? (error.code as number) : 0, stdout, stderr });
    });
  });
}

test("memcached-server with the libmemcached tools", { skip: missing("memccp/memcp", tools.cp) }, async (t) => {
  const port = await launch(t, "memcached-server").then((r) => r.port);
  const servers = `--servers=127.0.0.1:${port}`;
  const dir = tempDir(t, "memcached-example-");
  const hello = join(dir, "hello.txt");
  const binary = join(dir, "binary.bin");
  writeFileSync(hello, "hello, memcached\n");
  const bytes = Buffer.concat([randomBytes(300_000), Buffer.from("\r\nEND\r\n")]);
  writeFileSync(binary, bytes);

  // memccat prints every value followed by a newline of its own.
  await t.test("memccp stores files, memccat reads them back", { skip: missing("memccat", tools.cat) }, async () => {
    assert.equal((await run(tools.cp!, [servers, hello, binary])).code, 0);
    const cat = await run(tools.cat!, [servers, "hello.txt"]);
    assert.deepEqual([cat.code, cat.stdout], [0, "hello, memcached\n\n"]);
    const big = await new Promise<Buffer>((resolve, reject) =>
      execFile(tools.cat!, [servers, "binary.bin"], { encoding: "buffer", maxBuffer: 1 << 20 }, (e, out) => (e ? reject(e) : resolve(out))),
    );
    assert.ok(big.equals(Buffer.concat([bytes, Buffer.from("\n")])), "a 300 KB binary value comes back byte for byte");
  });

  await t.test("memccp --flag and --expire", { skip: missing("memccat", tools.cat) }, async () => {
    assert.equal((await run(tools.cp!, [servers, "--flag=42", "--expire=600", hello])).code, 0);
    const cat = await run(tools.cat!, [servers, "--flag", "hello.txt"]);
    assert.deepEqual([cat.code, cat.stdout], [0, "42\nhello, memcached\n\n"]);
  });

  await t.test("memccp --add and --replace", { skip: missing("memccat", tools.cat) }, async () => {
    writeFileSync(join(dir, "fresh.txt"), "first");
    assert.equal((await run(tools.cp!, [servers, "--replace", join(dir, "fresh.txt")])).code, 1, "replace of a missing key fails");
    assert.equal((await run(tools.cp!, [servers, "--add", join(dir, "fresh.txt")])).code, 0);
    writeFileSync(join(dir, "fresh.txt"), "second");
    assert.equal((await run(tools.cp!, [servers, "--add", join(dir, "fresh.txt")])).code, 1, "add of an existing key fails");
    assert.equal((await run(tools.cp!, [servers, "--replace", join(dir, "fresh.txt")])).code, 0);
    assert.equal((await run(tools.cat!, [servers, "fresh.txt"])).stdout, "second\n");
  });

  await t.test("memcexist (an add with an exptime in the past)", { skip: missing("memcexist", tools.exist) }, async () => {
    assert.equal((await run(tools.exist!, [servers, "hello.txt"])).code, 0);
    assert.equal((await run(tools.exist!, [servers, "no-such-key"])).code, 1);
    assert.equal((await run(tools.exist!, [servers, "no-such-key"])).code, 1, "the probe itself stored nothing");
  });

  await t.test("memctouch", { skip: missing("memctouch", tools.touch) }, async () => {
    assert.equal((await run(tools.touch!, [servers, "--expire=100", "hello.txt"])).code, 0);
    assert.equal((await run(tools.touch!, [servers, "--expire=100", "no-such-key"])).code, 1);
  });

  await t.test("memcrm deletes", { skip: missing("memcrm", tools.rm) || missing("memccat", tools.cat) }, async () => {
    assert.equal((await run(tools.rm!, [servers, "hello.txt"])).code, 0);
    assert.equal((await run(tools.cat!, [servers, "hello.txt"])).code, 1);
    assert.equal((await run(tools.rm!, [servers, "hello.txt"])).code, 1, "deleting a missing key fails");
  });

  await t.test("memcping and memcstat", { skip: missing("memcping", tools.ping) || missing("memcstat", tools.stat) }, async () => {
    assert.equal((await run(tools.ping!, [servers])).code, 0);
    const stat = await run(tools.stat!, [servers]);
    assert.equal(stat.code, 0, stat.stderr);
    assert.match(stat.stdout, /version: 1\.6\.0-pants-ts/);
    assert.match(stat.stdout, /curr_items: \d+/);
  });

  await t.test("memcflush empties the cache", { skip: missing("memcflush", tools.flush) || missing("memccat", tools.cat) }, async () => {
    assert.equal((await run(tools.cat!, [servers, "binary.bin"])).code, 0);
    assert.equal((await run(tools.flush!, [servers])).code, 0);
    assert.equal((await run(tools.cat!, [servers, "binary.bin"])).code, 1);
    assert.equal((await run(tools.cat!, [servers, "fresh.txt"])).code, 1);
  });
});

test("memcached-server over raw sockets", async (t) => {
  const server = await launch(t, "memcached-server");
  const port = server.port;
  let client: RawClient = await connect(port);
  t.after(() => client.destroy());
  /** Sends `input` and checks the next bytes received are exactly `expected`. */
  const expect = async (input: string | Buffer, expected: string): Promise<void> => {
    client.write(input);
    const got = (await client.read(Buffer.byteLength(expected, "latin1"))).toString("latin1");
    assert.equal(got, expected, `reply to ${JSON.stringify(input.toString().slice(0, 80))}`);
  };
  /** Sends `input` and returns everything received up to and including the next "END\r\n". */
  const untilEnd = async (input: string): Promise<string> => {
    client.write(input);
    await client.until(() => client.received.includes("END\r\n"), 5000, "END");
    return (await client.read(client.received.indexOf("END\r\n") + 5)).toString("latin1");
  };

  await t.test("set, get and gets with several keys", async () => {
    await expect("set a 5 0 3\r\nabc\r\n", "STORED\r\n");
    await expect("set b 4294967295 0 0\r\n\r\n", "STORED\r\n");
    await expect("get a nope b\r\n", "VALUE a 5 3\r\nabc\r\nVALUE b 4294967295 0\r\n\r\nEND\r\n");
    await expect("get nope\r\n", "END\r\n");
    const reply = await untilEnd("gets a b\r\n");
    const [, casA, casB] = /^VALUE a 5 3 (\d+)\r\nabc\r\nVALUE b 4294967295 0 (\d+)\r\n\r\nEND\r\n$/.exec(reply) ?? [];
    assert.ok(casA !== undefined && casB !== undefined && casA !== casB, reply);
  });

  await t.test("values may hold CRLF, binary bytes, and more than bufferSize", async () => {
    const value = Buffer.concat([Buffer.from("line one\r\nEND\r\nget a\r\n"), randomBytes(200_000)]);
    client.write(`set big 0 0 ${value.length}\r\n`);
    await expect(Buffer.concat([value, Buffer.from("\r\n")]), "STORED\r\n");
    client.write("get big\r\n");
    assert.equal((await client.read(`VALUE big 0 ${value.length}\r\n`.length)).toString(), `VALUE big 0 ${value.length}\r\n`);
    assert.ok((await client.read(value.length)).equals(value));
    assert.equal((await client.read(7)).toString(), "\r\nEND\r\n");
  });

  await t.test("a command and its data block split into single bytes", async () => {
    for (const byte of Buffer.from("set split 1 0 5\r\nhe\r\no\r\nget split\r\n")) {
      client.write(Buffer.from([byte]));
      await sleep(1);
    }
    const expected = "STORED\r\nVALUE split 1 5\r\nhe\r\no\r\nEND\r\n";
    assert.equal((await client.read(expected.length)).toString(), expected);
  });

  await t.test("lines may end in a bare newline (as nc sends them)", () => expect("set nl 0 0 2\nok\r\nget nl\n", "STORED\r\nVALUE nl 0 2\r\nok\r\nEND\r\n"));

  await t.test("add, replace, append, prepend", async () => {
    await expect("add a 0 0 1\r\nx\r\n", "NOT_STORED\r\n");
    await expect("add fresh 1 0 3\r\nnew\r\n", "STORED\r\n");
    await expect("replace missing 0 0 1\r\nx\r\n", "NOT_STORED\r\n");
    await expect("replace fresh 2 0 5\r\nnewer\r\n", "STORED\r\n");
    await expect("append fresh 9 0 2\r\n!!\r\n", "STORED\r\n");
    await expect("prepend fresh 9 0 2\r\n<<\r\n", "STORED\r\n");
    await expect("append missing 0 0 1\r\nx\r\n", "NOT_STORED\r\n");
    await expect("prepend missing 0 0 1\r\nx\r\n", "NOT_STORED\r\n");
    await expect("get fresh\r\n", "VALUE fresh 2 9\r\n<<newer!!\r\nEND\r\n"); // append/prepend keep the flags
  });

  await t.test("cas: gets, then cas with the right and a wrong unique", async () => {
    await expect("set c 0 0 2\r\nv1\r\n", "STORED\r\n");
    const reply = await untilEnd("gets c\r\n");
    const unique = /^VALUE c 0 2 (\d+)\r\nv1\r\nEND\r\n$/.exec(reply)?.[1];
    assert.ok(unique !== undefined, reply);
    await expect(`cas c 0 0 2 ${BigInt(unique) + 1000n}\r\nv2\r\n`, "EXISTS\r\n");
    await expect(`cas c 7 0 2 ${unique}\r\nv3\r\n`, "STORED\r\n");
    await expect(`cas c 0 0 2 ${unique}\r\nv4\r\n`, "EXISTS\r\n"); // the unique changed with the store
    await expect("cas nope 0 0 1 1\r\nx\r\n", "NOT_FOUND\r\n");
    await expect("get c\r\n", "VALUE c 7 2\r\nv3\r\nEND\r\n");
    await expect("cas c 0 0 2 notanumber\r\n", "CLIENT_ERROR bad command line format\r\n");
  });

  await t.test("delete", async () => {
    await expect("delete a\r\n", "DELETED\r\n");
    await expect("delete a\r\n", "NOT_FOUND\r\n");
    await expect("set a 0 0 1\r\n1\r\ndelete a 0\r\n", "STORED\r\nDELETED\r\n");
    await expect("delete a 5\r\n", "CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n");
    await expect("delete\r\n", "ERROR\r\n");
  });

  await t.test("incr and decr: 64-bit unsigned, wrapping up and stopping at 0 down", async () => {
    await expect("set n 0 0 2\r\n10\r\n", "STORED\r\n");
    await expect("incr n 5\r\n", "15\r\n");
    await expect("decr n 3\r\n", "12\r\n");
    await expect("decr n 100\r\n", "0\r\n");
    await expect("incr n 18446744073709551615\r\n", "18446744073709551615\r\n");
    await expect("incr n 2\r\n", "1\r\n");
    await expect("get n\r\n", "VALUE n 0 1\r\n1\r\nEND\r\n");
    await expect("incr nope 1\r\n", "NOT_FOUND\r\n");
    await expect("set s 0 0 3\r\nabc\r\n", "STORED\r\n");
    await expect("incr s 1\r\n", "CLIENT_ERROR cannot increment or decrement non-numeric value\r\n");
    await expect("decr s 1\r\n", "CLIENT_ERROR cannot increment or decrement non-numeric value\r\n");
    await expect("incr n -1\r\n", "CLIENT_ERROR invalid numeric delta argument\r\n");
    await expect("incr n 18446744073709551616\r\n", "CLIENT_ERROR invalid numeric delta argument\r\n");
    await expect("incr n\r\n", "ERROR\r\n");
  });

  await t.test("noreply silences every storage and update command", async () => {
    const quiet = [
      "set q 0 0 1 noreply\r\n1\r\n",
      "add q 0 0 1 noreply\r\n2\r\n",
      "replace q 0 0 1 noreply\r\n5\r\n",
      "append q 0 0 1 noreply\r\n0\r\n",
      "prepend q 0 0 1 noreply\r\n1\r\n",
      "cas q 0 0 1 1 noreply\r\n9\r\n",
      "incr q 5 noreply\r\n",
      "decr q 1 noreply\r\n",
      "touch q 100 noreply\r\n",
      "verbosity 1 noreply\r\n",
      "set gone 0 0 1 noreply\r\nx\r\n",
      "delete gone noreply\r\n",
    ].join("");
    await expect(quiet + "get q gone\r\n", "VALUE q 0 3\r\n154\r\nEND\r\n");
    await expect("flush_all noreply\r\nget q\r\n", "END\r\n");
  });

  await t.test("touch", async () => {
    await expect("set t 0 0 1\r\nx\r\ntouch t 100\r\n", "STORED\r\nTOUCHED\r\n");
    await expect("touch nope 100\r\n", "NOT_FOUND\r\n");
    await expect("touch t -1\r\nget t\r\n", "TOUCHED\r\nEND\r\n"); // a negative exptime expires it
    await expect("touch t soon\r\n", "CLIENT_ERROR invalid exptime argument\r\n");
  });

  await t.test("expiry: negative, relative seconds, absolute unix times", async () => {
    const now = Math.floor(Date.now() / 1000);
    await expect("set neg 0 -1 1\r\nx\r\nget neg\r\n", "STORED\r\nEND\r\n");
    await expect(`set abs 0 ${now + 3600} 1\r\nx\r\nget abs\r\n`, "STORED\r\nVALUE abs 0 1\r\nx\r\nEND\r\n");
    await expect("set past 0 2678400 1\r\nx\r\nget past\r\n", "STORED\r\nEND\r\n"); // > 30 days: 1970-02-01
    await expect("set rel 0 1 1\r\nx\r\nset keep 0 2592000 1\r\ny\r\n", "STORED\r\nSTORED\r\n"); // 30 days: still relative
    await expect("get rel keep\r\n", "VALUE rel 0 1\r\nx\r\nVALUE keep 0 1\r\ny\r\nEND\r\n");
    await sleep(1100);
    await expect("get rel keep\r\n", "VALUE keep 0 1\r\ny\r\nEND\r\n");
    await expect("add neg 0 0 1\r\nz\r\nget neg\r\n", "STORED\r\nVALUE neg 0 1\r\nz\r\nEND\r\n"); // expired items are gone for add too
  });

  await t.test("flush_all, now and with a delay", async () => {
    await expect("set f1 0 0 1\r\n1\r\nflush_all\r\nget f1 keep\r\n", "STORED\r\nOK\r\nEND\r\n");
    await expect("set f2 0 0 1\r\n2\r\nflush_all 1\r\nget f2\r\n", "STORED\r\nOK\r\nVALUE f2 0 1\r\n2\r\nEND\r\n");
    await sleep(1100);
    await expect("get f2\r\n", "END\r\n");
    await expect("set f3 0 0 1\r\n3\r\nget f3\r\n", "STORED\r\nVALUE f3 0 1\r\n3\r\nEND\r\n"); // stored after the flush time
    await expect("flush_all soon\r\n", "CLIENT_ERROR bad command line format\r\n");
    // An immediate flush replaces a delayed one still to come (as memcached): what is stored after it stays.
    await expect("flush_all 1\r\nflush_all\r\nset f4 0 0 1\r\n4\r\n", "OK\r\nOK\r\nSTORED\r\n");
    await sleep(1100);
    await expect("get f4\r\n", "VALUE f4 0 1\r\n4\r\nEND\r\n");
  });

  await t.test("a data block whose length does not match: bad data chunk, nothing stored", async () => {
    // 5 bytes for a 3-byte block: "abc" + "de" instead of CRLF; the CRLF after is an empty command line.
    await expect("set bad 0 0 3\r\nabcde\r\n", "CLIENT_ERROR bad data chunk\r\nERROR\r\n");
    await expect("get bad\r\n", "END\r\n");
    // 2 bytes for a 4-byte block: the block runs into the next command line ("ab\r\nge"), the rest of which is no command.
    client.write("set bad 0 0 4\r\nab\r\n");
    await expect("get bad\r\n", "CLIENT_ERROR bad data chunk\r\nERROR\r\n");
    await expect("get bad\r\n", "END\r\n");
    await expect("set ok 0 0 2\r\nok\r\nget ok\r\n", "STORED\r\nVALUE ok 0 2\r\nok\r\nEND\r\n"); // the connection goes on
  });

  await t.test("bad command lines", async () => {
    const key251 = "k".repeat(251);
    await expect("set k x 0 1\r\n", "CLIENT_ERROR bad command line format\r\n");
    await expect("set k 0 0 -1\r\n", "CLIENT_ERROR bad command line format\r\n");
    await expect("set k 0 soon 1\r\n", "CLIENT_ERROR bad command line format\r\n");
    await expect(`set ${key251} 0 0 1\r\n`, "CLIENT_ERROR bad command line format\r\n");
    await expect(`get a ${key251}\r\n`, "CLIENT_ERROR bad command line format\r\n");
    await expect(`set ${"k".repeat(250)} 0 0 1\r\nx\r\n`, "STORED\r\n");
    await expect("set k 0 0\r\n", "ERROR\r\n");
    await expect("get\r\n", "ERROR\r\n");
    await expect("bogus command\r\n", "ERROR\r\n");
    await expect("GET a\r\n", "ERROR\r\n"); // commands are lower case
  });

  await t.test("a value over 1 MiB: SERVER_ERROR, and its data block is skipped", async () => {
    const size = 2 * 1024 * 1024;
    await expect("set huge 0 0 3\r\nold\r\n", "STORED\r\n"); // a failed store leaves no stale value behind (as memcached)
    client.write(`set huge 0 0 ${size}\r\n`);
    client.write(Buffer.alloc(size, "x"));
    await expect("\r\nget huge\r\n", "SERVER_ERROR object too large for cache\r\nEND\r\n");
    await expect("set small 0 0 2\r\nhi\r\nappend small 0 0 1048576\r\n", "STORED\r\n");
    await expect(Buffer.concat([Buffer.alloc(1048576, "y"), Buffer.from("\r\n")]), "SERVER_ERROR object too large for cache\r\n"); // append past the limit
    await expect("get small\r\n", "VALUE small 0 2\r\nhi\r\nEND\r\n");
  });

  await t.test("version, verbosity, stats", async () => {
    await expect("version\r\n", "VERSION 1.6.0-pants-ts\r\n");
    await expect("verbosity 1\r\n", "OK\r\n");
    await expect("verbosity\r\n", "ERROR\r\n");
    const stats = await untilEnd("stats\r\n");
    assert.match(stats, /^STAT pid \d+\r\n/);
    assert.match(stats, /\r\nSTAT version 1\.6\.0-pants-ts\r\n/);
    assert.match(stats, /\r\nSTAT curr_connections 1\r\n/);
  });

  await t.test("a command line over 64 KiB: CLIENT_ERROR, then close", async () => {
    const other = await connect(port);
    t.after(() => other.destroy());
    other.write("get " + "k ".repeat(40_000));
    assert.equal((await other.readToEnd()).toString(), "CLIENT_ERROR line too long\r\n");
  });

  await t.test("a client that pipelines gets of 100 MB and stops reading for a second: the server pauses reading instead of queueing them, and every reply arrives", async () => {
    const value = Buffer.alloc(1000 * 1000, "v");
    const expected = "STORED\r\n".length + 100 * (`VALUE stuck 0 ${value.length}\r\n`.length + value.length + "\r\nEND\r\n".length);
    const got = await stalledReader(t, server, Buffer.concat([Buffer.from(`set stuck 0 0 ${value.length}\r\n`), value, Buffer.from("\r\n" + "get stuck\r\n".repeat(100))]), expected); // 100 MB of replies
    assert.ok(!got.includes("CLIENT_ERROR"), "a full send buffer is not a client error");
    assert.doesNotMatch(server.stderr(), /error/i);
    await expect("get stuck\r\n", `VALUE stuck 0 ${value.length}\r\n${value.toString("latin1")}\r\nEND\r\n`); // others are still served
  });

  await t.test("quit closes the connection; others go on", async () => {
    await expect("set last 0 0 1\r\nz\r\n", "STORED\r\n");
    client.write("quit\r\nget last\r\n");
    assert.equal((await client.readToEnd()).length, 0);
    client = await connect(port);
    await expect("get last\r\n", "VALUE last 0 1\r\nz\r\nEND\r\n");
  });
});
