/**
 * examples/resp-server.ts, run as its own process and driven by the real
 * Redis tools: redis-cli (always in --no-raw mode, so replies read as they
 * do in a terminal: `(integer) 1`, `"v"`, `(nil)`, `(error) ERR ...`),
 * `redis-cli --pipe` and redis-benchmark; then inline commands, pipelining
 * and malformed input over raw sockets.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { connect, sleep } from "./helpers.js";
import { stalledReader, startExample as launch } from "./example-process.js";


function installed(program: string, versionFlag = "--version"): boolean {
  return spawnSync(program, [versionFlag], { stdio: "ignore" }).status === 0;
}
const NO_CLI = installed("redis-cli") ? false : "redis-cli is not installed (Debian: apt-get install redis-tools)";
const NO_PROC = existsSync("/proc/self/status") ? false : "reads a process' peak RSS (VmHWM) from /proc";
const NO_BENCH = installed("redis-benchmark") ? false : "redis-benchmark is not installed (Debian: apt-get install redis-tools)";

/** Runs a program; resolves with its exit code and output (never rejects on a non-zero exit). */
function run(program: string, args: string[], input?: string | Buffer, timeout = 60_000): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = execFile(program, args, { timeout, maxBuffer: 16 * 1024 * 1024 }, (error, stdout, stderr) => {
      if (error && typeof error.code !== "number") reject(error);
      else resolve({ code: error ? (error.code as number) : 0, stdout, stderr });
    });
    child.stdin?.on("error", () => {}); // EPIPE when the program exits without reading its input: its output says why
    child.stdin?.end(input ?? "");
  });
}

/** redis-cli --no-raw: its output without the final newline. */
async function cli(port: number, ...args: string[]): Promise<string> {
  const { code, stdout, stderr } = await run("redis-cli", ["-p", String(port), "--no-raw", ...args]);
  assert.equal(code, 0, `redis-cli ${args.join(" ")} failed: ${stderr}`);
  return stdout.replace(/\n$/, "");
}

/**
 * One redis-cli run reading its commands from stdin, one per line: for
 * timing-sensitive checks, as they all go over one connection at once.
 */
async function cliBatch(port: number, commands: string[]): Promise<string> {
  const { code, stdout, stderr } = await run("redis-cli", ["-p", String(port), "--no-raw"], commands.join("\n") + "\n");
  assert.equal(code, 0, `redis-cli failed: ${stderr}`);
  return stdout.replace(/\n$/, "");
}

/** Many redis-cli calls, each checked: [args, expected output]. */
async function expectAll(port: number, cases: Array<[string[], string]>): Promise<void> {
  for (const [args, expected] of cases) assert.equal(await cli(port, ...args), expected, `redis-cli ${args.join(" ")}`);
}

/** A command as RESP (a multibulk of bulk strings). */
function resp(...args: Array<string | Buffer>): Buffer {
  const parts: Buffer[] = [Buffer.from(`*${args.length}\r\n`)];
  for (const a of args) {
    const b = Buffer.from(a);
    parts.push(Buffer.from(`$${b.length}\r\n`), b, Buffer.from("\r\n"));
  }
  return Buffer.concat(parts);
}

test("resp-server with redis-cli", { skip: NO_CLI }, async (t) => {
  const port = await launch(t, "resp-server").then((r) => r.port);

  await t.test("PING and ECHO", () =>
    expectAll(port, [
      [["PING"], "PONG"],
      [["ping", "hello world"], '"hello world"'],
      [["PING", "a", "b"], "(error) ERR wrong number of arguments for 'ping' command"],
      [["ECHO", "hi there"], '"hi there"'],
      [["ECHO", "line\nbreak"], '"line\\nbreak"'],
      [["ECHO"], "(error) ERR wrong number of arguments for 'echo' command"],
    ]));

  await t.test("SET and GET, with NX and XX", () =>
    expectAll(port, [
      [["SET", "s:k", "v1"], "OK"],
      [["GET", "s:k"], '"v1"'],
      [["GET", "s:missing"], "(nil)"],
      [["SET", "s:k", "v2", "NX"], "(nil)"],
      [["GET", "s:k"], '"v1"'],
      [["SET", "s:k", "v2", "XX"], "OK"],
      [["GET", "s:k"], '"v2"'],
      [["SET", "s:new", "x", "XX"], "(nil)"],
      [["GET", "s:new"], "(nil)"],
      [["set", "s:new", "x", "nx"], "OK"],
      [["GET", "s:new"], '"x"'],
      [["SET", "s:empty", ""], "OK"],
      [["GET", "s:empty"], '""'],
      [["SET", "s:k", "v", "NX", "XX"], "(error) ERR syntax error"],
      [["SET", "s:k", "v", "EX", "10", "PX", "100"], "(error) ERR syntax error"],
      [["SET", "s:k", "v", "EX"], "(error) ERR syntax error"],
      [["SET", "s:k", "v", "FOO"], "(error) ERR syntax error"],
      [["SET", "s:k", "v", "EX", "abc"], "(error) ERR value is not an integer or out of range"],
      [["SET", "s:k", "v", "EX", "0"], "(error) ERR invalid expire time in 'set' command"],
      [["SET", "s:k", "v", "PX", "-5"], "(error) ERR invalid expire time in 'set' command"],
      [["SET", "s:k"], "(error) ERR wrong number of arguments for 'set' command"],
      [["GET"], "(error) ERR wrong number of arguments for 'get' command"],
      [["GET", "a", "b"], "(error) ERR wrong number of arguments for 'get' command"],
    ]));

  await t.test("DEL and EXISTS count keys", () =>
    expectAll(port, [
      [["MSET", "d:a", "1", "d:b", "2", "d:c", "3"], "OK"],
      [["EXISTS", "d:a", "d:a", "d:b", "d:none"], "(integer) 3"],
      [["DEL", "d:a", "d:b", "d:a", "d:none"], "(integer) 2"],
      [["EXISTS", "d:a", "d:b", "d:c"], "(integer) 1"],
      [["DEL"], "(error) ERR wrong number of arguments for 'del' command"],
      [["EXISTS"], "(error) ERR wrong number of arguments for 'exists' command"],
    ]));

  await t.test("INCR", () =>
    expectAll(port, [
      [["INCR", "i:n"], "(integer) 1"],
      [["INCR", "i:n"], "(integer) 2"],
      [["SET", "i:neg", "-10"], "OK"],
      [["INCR", "i:neg"], "(integer) -9"],
      [["SET", "i:text", "abc"], "OK"],
      [["INCR", "i:text"], "(error) ERR value is not an integer or out of range"],
      [["SET", "i:float", "1.5"], "OK"],
      [["INCR", "i:float"], "(error) ERR value is not an integer or out of range"],
      [["SET", "i:negzero", "-0"], "OK"],
      [["INCR", "i:negzero"], "(error) ERR value is not an integer or out of range"], // as Redis' string2ll
      [["SET", "i:max", "9223372036854775806"], "OK"],
      [["INCR", "i:max"], "(integer) 9223372036854775807"],
      [["INCR", "i:max"], "(error) ERR increment or decrement would overflow"],
      [["GET", "i:max"], '"9223372036854775807"'],
      [["INCR"], "(error) ERR wrong number of arguments for 'incr' command"],
    ]));

  await t.test("MSET and MGET", () =>
    expectAll(port, [
      [["MSET", "m:a", "alpha", "m:c", "gamma"], "OK"],
      [["MGET", "m:a", "m:b", "m:c"], '1) "alpha"\n2) (nil)\n3) "gamma"'],
      [["MSET", "m:a", "1", "m:b"], "(error) ERR wrong number of arguments for 'mset' command"],
      [["MGET"], "(error) ERR wrong number of arguments for 'mget' command"],
    ]));

  await t.test("EXPIRE and TTL", async () => {
    const batch = await cliBatch(port, ["SET e:k v", "EXPIRE e:k 100", "TTL e:k", "SET e:ex v EX 50", "TTL e:ex"]);
    assert.equal(batch, "OK\n(integer) 1\n(integer) 100\nOK\n(integer) 50");
    await expectAll(port, [
      [["SET", "e:k", "v"], "OK"],
      [["TTL", "e:k"], "(integer) -1"],
      [["TTL", "e:missing"], "(integer) -2"],
      [["EXPIRE", "e:k", "100"], "(integer) 1"],
      [["EXPIRE", "e:missing", "100"], "(integer) 0"],
      [["EXPIRE", "e:k", "soon"], "(error) ERR value is not an integer or out of range"],
      [["EXPIRE", "e:k"], "(error) ERR wrong number of arguments for 'expire' command"],
      [["SET", "e:k", "v2"], "OK"],
      [["TTL", "e:k"], "(integer) -1"], // SET clears the TTL
      [["INCR", "e:counter"], "(integer) 1"],
      [["EXPIRE", "e:counter", "7000"], "(integer) 1"],
      [["INCR", "e:counter"], "(integer) 2"],
      [["TTL", "e:counter"], "(integer) 7000"], // INCR keeps it (a TTL this long cannot round down during the test)
      [["EXPIRE", "e:counter", "-1"], "(integer) 1"], // a past time deletes the key
      [["EXISTS", "e:counter"], "(integer) 0"],
      [["TTL"], "(error) ERR wrong number of arguments for 'ttl' command"],
    ]);
  });

  await t.test("PX and EX really expire keys", async () => {
    const batch = await cliBatch(port, ["SET x:px soon PX 300", "SET x:ex later EX 2", "GET x:px", "TTL x:px", "TTL x:ex", "EXISTS x:px x:ex"]);
    assert.equal(batch, 'OK\nOK\n"soon"\n(integer) 0\n(integer) 2\n(integer) 2'); // 300 ms rounds to 0 s, as in Redis
    await sleep(450);
    await expectAll(port, [
      [["GET", "x:px"], "(nil)"],
      [["TTL", "x:px"], "(integer) -2"],
      [["GET", "x:ex"], '"later"'],
    ]);
    await sleep(1700);
    await expectAll(port, [
      [["GET", "x:ex"], "(nil)"],
      [["EXISTS", "x:px", "x:ex"], "(integer) 0"],
      [["MGET", "x:px", "x:ex"], "1) (nil)\n2) (nil)"],
    ]);
  });

  await t.test("unknown commands and wrong arity are errors, as Redis words them", () =>
    expectAll(port, [
      [["FOO"], "(error) ERR unknown command 'FOO', with args beginning with: "],
      [["foo", "bar", "baz qux"], "(error) ERR unknown command 'foo', with args beginning with: 'bar' 'baz qux' "],
      [["HSET", "h", "f", "v"], "(error) ERR unknown command 'HSET', with args beginning with: 'h' 'f' 'v' "],
      [["get", "a", "b", "c"], "(error) ERR wrong number of arguments for 'get' command"],
      [["Ttl"], "(error) ERR wrong number of arguments for 'ttl' command"],
    ]));

  await t.test("COMMAND and CONFIG GET reply empty arrays", () =>
    expectAll(port, [
      [["COMMAND"], "(empty array)"],
      [["COMMAND", "DOCS"], "(empty array)"],
      [["CONFIG", "GET", "save"], "(empty array)"],
      [["CONFIG", "SET", "save", ""], "(error) ERR unknown subcommand 'SET'. Try CONFIG HELP."],
      [["CONFIG", "GET"], "(error) ERR wrong number of arguments for 'config|get' command"],
      [["CONFIG"], "(error) ERR wrong number of arguments for 'config' command"],
    ]));

  await t.test("binary values larger than bufferSize survive (redis-cli -x)", async () => {
    const value = Buffer.concat([randomBytes(100_000), Buffer.from("\r\n*1\r\n$4\r\nPING\r\n\0")]);
    const set = await run("redis-cli", ["-p", String(port), "--no-raw", "-x", "SET", "bin:big"], value);
    assert.equal(set.stdout, "OK\n");
    const client = await connect(port);
    t.after(() => client.destroy());
    client.write(resp("GET", "bin:big"));
    const header = `$${value.length}\r\n`;
    assert.equal((await client.read(header.length)).toString(), header);
    assert.deepEqual(await client.read(value.length), value);
    assert.equal((await client.read(2)).toString(), "\r\n");
  });

  await t.test("redis-cli --pipe: 1000 SETs in one batch", async () => {
    const batch = Buffer.concat(Array.from({ length: 1000 }, (_, i) => resp("SET", `pipe:${i}`, `value ${i}\r\n`)));
    const { code, stdout } = await run("redis-cli", ["-p", String(port), "--pipe"], batch);
    assert.equal(code, 0, stdout);
    assert.match(stdout, /errors: 0, replies: 1000$/m);
    await expectAll(port, [
      [["GET", "pipe:0"], '"value 0\\r\\n"'],
      [["GET", "pipe:999"], '"value 999\\r\\n"'],
      [["MGET", "pipe:1", "pipe:500", "pipe:1000"], '1) "value 1\\r\\n"\n2) "value 500\\r\\n"\n3) (nil)'],
      [["EXISTS", ...Array.from({ length: 1000 }, (_, i) => `pipe:${i}`)], "(integer) 1000"],
    ]);
  });

  await t.test("FLUSHALL and QUIT", () =>
    expectAll(port, [
      [["SET", "f:a", "1"], "OK"],
      [["FLUSHALL", "BOGUS"], "(error) ERR syntax error"],
      [["EXISTS", "f:a", "pipe:1"], "(integer) 2"],
      [["FLUSHALL"], "OK"],
      [["EXISTS", "f:a", "pipe:1"], "(integer) 0"],
      [["FLUSHALL", "ASYNC"], "OK"],
      [["QUIT"], "OK"],
      [["PING"], "PONG"], // the server is still serving others
    ]));
});

test("resp-server under redis-benchmark", { skip: NO_BENCH }, async (t) => {
  const port = await launch(t, "resp-server").then((r) => r.port);
  const { code, stdout, stderr } = await run("redis-benchmark", ["-p", String(port), "-t", "ping,set,get", "-n", "2000", "-q"], undefined, 120_000);
  assert.equal(code, 0, `redis-benchmark failed: ${stderr}`);
  const summary = stdout.split(/[\r\n]+/).filter((line) => / requests per second/.test(line));
  assert.deepEqual(summary.map((line) => line.trim().split(":")[0]), ["PING_INLINE", "PING_MBULK", "SET", "GET"], stdout);
  assert.doesNotMatch(stdout + stderr, /\bERR\b|error/i);
});

test("resp-server over raw sockets", async (t) => {
  const server = await launch(t, "resp-server");
  const port = server.port;
  /** Sends `input` and returns everything received until the server closed the connection. */
  const session = async (input: string | Buffer): Promise<string> => {
    const client = await connect(port);
    t.after(() => client.destroy());
    client.write(input);
    return (await client.readToEnd()).toString("latin1");
  };
  const exchange = async (input: string | Buffer, expected: string): Promise<void> => {
    const client = await connect(port);
    t.after(() => client.destroy());
    client.write(input);
    assert.equal((await client.read(Buffer.byteLength(expected))).toString("latin1"), expected);
    client.destroy();
  };

  await t.test("inline commands, as typed by hand", async () => {
    await exchange("PING\r\n", "+PONG\r\n");
    await exchange("ping  hello\r\n", "$5\r\nhello\r\n");
    await exchange("\r\n\r\nSET inline:k v1\r\nGET inline:k\r\nEXISTS inline:k nope\r\n", "+OK\r\n$2\r\nv1\r\n:1\r\n");
    await exchange("GET\r\n", "-ERR wrong number of arguments for 'get' command\r\n");
    await exchange("NOPE a\r\n", "-ERR unknown command 'NOPE', with args beginning with: 'a' \r\n");
    await exchange("MGET inline:k nope\r\n", "*2\r\n$2\r\nv1\r\n$-1\r\n");
  });

  await t.test("inline commands take quoted words and escapes, as redis-server splits them", async () => {
    await exchange('SET "inline q" "a b\\r\\n\\x41\\"\\\\z"\r\nGET "inline q"\r\n', '+OK\r\n$9\r\na b\r\nA"\\z\r\n');
    await exchange("ECHO 'it\\'s \\n'\r\n", "$7\r\nit's \\n\r\n"); // single quotes: only \' is an escape
    await exchange('ECHO ""\r\nECHO a"b c"\r\nECHO "\\xZZ\\q"\r\n', "$0\r\n\r\n$4\r\nab c\r\n$4\r\nxZZq\r\n");
    const client = await connect(port); // bytes JS' trim() would take for spaces (read as latin1)
    t.after(() => client.destroy());
    client.write(Buffer.from("ECHO \xa0x\xa0\r\n", "latin1"));
    assert.equal((await client.read(9)).toString("latin1"), "$3\r\n\xa0x\xa0\r\n");
  });

  await t.test("pipelined commands get their replies in order", async () => {
    const batch = Buffer.concat([resp("SET", "p:k", "a b\r\nc"), resp("GET", "p:k"), Buffer.from("PING\r\n"), resp("INCR", "p:n"), resp("INCR", "p:n"), resp("DEL", "p:k", "p:n"), resp("GET", "p:k")]);
    await exchange(batch, "+OK\r\n$6\r\na b\r\nc\r\n+PONG\r\n:1\r\n:2\r\n:2\r\n$-1\r\n");
  });

  await t.test("framing does not depend on how the bytes are split", async () => {
    const batch = Buffer.concat([resp("SET", "split:k", "hello\r\nworld"), resp("GET", "split:k"), Buffer.from("PING\r\n")]);
    const client = await connect(port);
    t.after(() => client.destroy());
    for (const byte of batch) {
      client.write(Buffer.from([byte]));
      await sleep(1);
    }
    const expected = "+OK\r\n$12\r\nhello\r\nworld\r\n+PONG\r\n";
    assert.equal((await client.read(expected.length)).toString(), expected);
  });

  await t.test("empty and negative multibulk counts are ignored", () => exchange("*0\r\n*-1\r\nPING\r\n", "+PONG\r\n"));

  await t.test("an inline command ended by \\n alone is answered, as Redis does (echo PING | nc)", () =>
    exchange("PING\nECHO hi\r\nPING\n", "+PONG\r\n$2\r\nhi\r\n+PONG\r\n"));

  await t.test("QUIT replies +OK then closes; later commands are not run", async () => {
    assert.equal(await session("PING\r\nQUIT\r\nPING\r\n"), "+PONG\r\n+OK\r\n");
  });

  const malformed: Array<[string, string | Buffer, string]> = [
    ["a bad multibulk count", "*x\r\n", "invalid multibulk length"],
    ["a multibulk count over the limit", "*2000000\r\n", "invalid multibulk length"],
    ["more arguments than one command may hold (64K: each costs heap)", "*65537\r\n", "invalid multibulk length"],
    ["a bad bulk length", "*2\r\n$3\r\nGET\r\n$x\r\n", "invalid bulk length"],
    ["a negative bulk length", "*1\r\n$-1\r\n", "invalid bulk length"],
    ["a bulk length of -0 (Redis' string2ll refuses it)", "*1\r\n$-0\r\n\r\n", "invalid bulk length"],
    ["a multibulk count of -0", "*-0\r\nPING\r\n", "invalid multibulk length"],
    ["a bulk length over proto-max-bulk-len", "*1\r\n$536870913\r\n", "invalid bulk length"],
    ["no $ where a bulk string belongs", "*1\r\n+PING\r\n", "expected '$', got '+'"],
    ["a bulk body not followed by CRLF", "*1\r\n$4\r\nPINGXX\r\n", "expected CRLF after bulk string"],
    ["an inline request over 64 KiB", Buffer.alloc(70_000, "a"), "too big inline request"],
    ["an inline request with an unclosed quote", 'ECHO "abc\r\nPING\r\n', "unbalanced quotes in request"],
    ["an inline request with a closing quote not followed by a space", "ECHO 'a'b\r\n", "unbalanced quotes in request"],
  ];
  for (const [what, input, message] of malformed) {
    await t.test(`${what}: protocol error, then close`, async () => {
      assert.equal(await session(input), `-ERR Protocol error: ${message}\r\n`);
    });
  }

  await t.test("replies before a protocol error are still sent", async () => {
    const reply = await session(Buffer.concat([resp("PING"), Buffer.from("*1\r\n$2\r\nabcd\r\n")]));
    assert.equal(reply, "+PONG\r\n-ERR Protocol error: expected CRLF after bulk string\r\n");
  });

  await t.test("a client that pipelines GETs of 100 MiB and stops reading for a second: the server pauses reading instead of queueing them, and every reply arrives", async () => {
    const gets = Array.from({ length: 100 }, () => resp("GET", "stuck:big")); // 100 MiB of replies
    const expected = "+OK\r\n".length + 100 * ("$1048576\r\n".length + 1024 * 1024 + 2);
    const got = await stalledReader(t, server, Buffer.concat([resp("SET", "stuck:big", Buffer.alloc(1024 * 1024, "v")), ...gets]), expected);
    assert.ok(!got.includes("Protocol error"), "a full send buffer is not a protocol error");
    assert.doesNotMatch(server.stderr(), /error/i);
  });

  await t.test("an MGET of one 1 MiB value 500 times is not built in memory; the client that does not read is dropped", { skip: NO_PROC }, async () => {
    const peak = (): number => Number(/VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${server.proc.pid}/status`, "utf8"))?.[1]) * 1024;
    const before = peak();
    const stuck = await connect(port);
    t.after(() => stuck.destroy());
    stuck.socket.pause(); // reads nothing
    stuck.write(Buffer.concat([resp("SET", "mget:big", Buffer.alloc(1024 * 1024, "m")), resp("MGET", ...Array<string>(500).fill("mget:big"))]));
    await sleep(1000);
    stuck.socket.resume();
    const got = await stuck.readToEnd(10_000);
    assert.ok(got.length < 64 * 1024 * 1024, `${got.length} bytes were still sent to a client that stopped reading`);
    const grown = peak() - before;
    assert.ok(grown < 256 * 1024 * 1024, `the server's peak RSS grew by ${grown >> 20} MiB for a 6 KB request (a 500 MiB reply)`);
    assert.doesNotMatch(server.stderr(), /error/i);
  });

  await t.test("the server survives all that", () => exchange(resp("PING"), "+PONG\r\n"));
});
