/**
 * The package as a user gets it: `npm pack`, then `npm install` of the
 * tarball into a new project outside the repository, where the addon the
 * package carries prebuilt for this platform serves (with or without install
 * scripts), an application compiles against the shipped declarations
 * (strict, skipLibCheck off; nodenext, a bundler's resolution, and CommonJS
 * with TypeScript's default node10 resolution) and runs over a real loopback
 * socket, and the installed `pants-ts` command serves one of its modules; a
 * package without the prebuilt addon builds it from the shipped C sources,
 * or, installed without scripts, runs on node:net. A file
 * the package needs but package.json's "files" leaves out fails here, though
 * every test that imports ../src passes.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import { spawn, spawnSync } from "node:child_process";
import type { SpawnSyncReturns } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { tempDir, waitFor } from "./helpers.js";

const root = new URL("..", import.meta.url).pathname;
const pkg = JSON.parse(readFileSync(join(root, "package.json"), "utf8")) as { version: string };

// An application's source: every main name, typed by its connection class.
const MAIN_TS = `
import { NetStruct, Server, Stream, relay, runCluster } from "pants-ts";
import type { Address, ClusterHandle, RelayResult, ServerOptions } from "pants-ts";
import { memoryPeer } from "pants-ts/testing";
import type { MemoryPeer } from "pants-ts/testing";

export class Chat extends Stream {
  declare server: Server<Chat> | null;
  nick = "guest";
  override onConnect(): void {
    this.encoding = "utf8";
    this.readDelimiter = "\\n";
  }
  override onRead(line: string): void {
    this.write(\`\${this.nick}: \${line}\\n\`);
  }
}

// Typed only: a proxy and a cluster are not run here.
const forward: (a: Stream, b: Stream) => Promise<RelayResult> = relay;
const cluster = (main: () => void): Promise<ClusterHandle> => runCluster(main, { workers: 2 });
void forward;
void cluster;

const record = new NetStruct("!H$");
const values = record.unpack(record.pack("netstruct"));

const peer: MemoryPeer<Chat> = memoryPeer(Chat);
await peer.send("memory\\n", { chunkSize: 1 });
const memory = (await peer.read()).toString();
peer.end();
await peer.closed;

const options: ServerOptions = { maxConnections: 10 };
const server: Server<Chat> = new Server(Chat, options).listen(["127.0.0.1", 0]);
await server.ready();
const address: Address | null = server.localAddress;
if (!Array.isArray(address)) throw new Error("not a TCP address");
const client = new Stream().connect(["127.0.0.1", address[1]]);
await client.ready();
client.encoding = "utf8";
client.readDelimiter = "\\n";
const reply = await new Promise<string>((resolve) => {
  client.onRead = (line: unknown) => resolve(String(line));
  client.write("socket\\n");
});
const nicks: string[] = [...server.channels.values()].map((chat) => chat.nick);
client.close();
server.close();
console.log(JSON.stringify({ transport: server.transport, netstruct: String(values[0]), memory, reply, nicks }));
`;

// A module for \`pants-ts serve\`.
const ECHO_TS = `
import { Stream } from "pants-ts";

export default class Echo extends Stream {
  override onConnect(): void {
    this.readDelimiter = "\\n";
  }
  override onRead(line: Buffer): void {
    this.write(\`echo \${line.toString()}\\n\`);
  }
}
`;

// The application as CommonJS (no top-level await): compiled to require() calls.
const CJS_TS = `
import { Server, Stream } from "pants-ts";
import { memoryPeer } from "pants-ts/testing";
import type { MemoryPeer } from "pants-ts/testing";

class Echo extends Stream {
  override onConnect(): void {
    this.encoding = "utf8";
    this.readDelimiter = "\\n";
  }
  override onRead(line: string): void {
    this.write(\`echo \${line}\\n\`);
  }
}

async function main(): Promise<void> {
  const peer: MemoryPeer<Echo> = memoryPeer(Echo);
  await peer.send("memory\\n");
  const memory = (await peer.read()).toString();
  peer.end();
  await peer.closed;
  const server = new Server(Echo).listen(["127.0.0.1", 0]);
  await server.ready();
  const address = server.localAddress;
  if (!Array.isArray(address)) throw new Error("not a TCP address");
  const client = new Stream().connect(["127.0.0.1", address[1]]);
  await client.ready();
  client.encoding = "utf8";
  client.readDelimiter = "\\n";
  const reply = await new Promise<string>((resolve) => {
    client.onRead = (line: unknown) => resolve(String(line));
    client.write("socket\\n");
  });
  client.close();
  server.close();
  console.log(JSON.stringify({ memory, reply }));
}
main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
`;

/** `npm ...` in `cwd`, with none of the npm_* settings of an enclosing `npm test`. */
function npm(args: string[], cwd: string): SpawnSyncReturns<string> {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!/^npm_/i.test(k)) env[k] = v;
  return spawnSync("npm", args, { cwd, env, encoding: "utf8", timeout: 50_000 });
}

const npmMissing = ((): string | false => {
  const r = spawnSync("npm", ["--version"], { encoding: "utf8" });
  return r.error ? `npm is not available (${r.error.message}): the packed package cannot be installed` : false;
})();
// npm test's second pass (PANTS_TS_TRANSPORT=js) packs and installs the same
// tarball again: the install without scripts below already runs a consumer
// on node:net.
const secondPass = process.env.PANTS_TS_TRANSPORT === "js" && "the node:net consumer runs in npm test's first pass (the install without scripts)";

/** `npm pack` of the checkout into `dir`, without its scripts (it packs what `npm run build` made): the tarball and its file list. */
function pack(dir: string): { tarball: string; files: string[] } {
  mkdirSync(dir, { recursive: true });
  const packed = npm(["pack", "--ignore-scripts", "--json", "--pack-destination", dir], root);
  assert.equal(packed.status, 0, `npm pack:\n${packed.stdout}${packed.stderr}`);
  const [info] = JSON.parse(packed.stdout) as Array<{ filename: string; files: Array<{ path: string }> }>;
  return { tarball: join(dir, info!.filename), files: info!.files.map((f) => f.path) };
}

/** Where the package carries the addon prebuilt for this platform (what native/prebuild.cjs writes when packed). */
const PREBUILT = join("prebuilds", `${process.platform}-${process.arch}`, "pants_native.node");

test("npm pack, npm install of the tarball elsewhere: the prebuilt addon is used, a strict nodenext consumer compiles against the .d.ts and echoes over loopback, the pants-ts command serves; CommonJS; no install scripts; no prebuilt: the addon builds", { skip: secondPass || npmMissing, timeout: 150_000 }, async (t) => {
  assert.ok(existsSync(join(root, "dist", "src", "index.js")), "dist/ is built (npm run build)");
  const dir = tempDir(t, "pants-ts-package-");
  const builtHere = existsSync(join(root, "build", "Release", "pants_native.node"));

  // As npm pack's prepack step does (without building again): the addon built
  // here, as the package's prebuilt one for this platform; postpack removes it.
  assert.ok(!existsSync(join(root, "prebuilds")), "no prebuilds/ left in the checkout by an earlier npm pack");
  const plain = pack(join(dir, "plain"));
  let withPrebuilt = plain;
  if (builtHere) {
    t.after(() => rmSync(join(root, "prebuilds"), { recursive: true, force: true }));
    const copied = spawnSync(process.execPath, [join(root, "native", "prebuild.cjs"), "--from-build"], { cwd: root, encoding: "utf8" });
    assert.equal(copied.status, 0, `native/prebuild.cjs --from-build:\n${copied.stdout}${copied.stderr}`);
    try {
      withPrebuilt = pack(join(dir, "prebuilt"));
    } finally {
      spawnSync(process.execPath, [join(root, "native", "prebuild.cjs"), "--clean"], { cwd: root });
    }
    assert.ok(withPrebuilt.files.includes(PREBUILT), `the package carries ${PREBUILT}: ${withPrebuilt.files.join(", ")}`);
    assert.ok(!existsSync(join(root, "prebuilds")), "--clean removed prebuilds/");
  }
  const tarball = withPrebuilt.tarball;
  // Only what this checkout's sources compile to: `npm run build` empties
  // dist/ first, so the old output of a module since deleted cannot ship.
  const orphans = plain.files.filter((p) => p.startsWith("dist/src/") && !existsSync(join(root, p.slice("dist/".length).replace(/(\.d\.ts|\.js\.map|\.js)$/, ".ts"))));
  assert.deepEqual(orphans, [], "the package ships compiled files whose source is gone");

  const app = join(dir, "app");
  mkdirSync(join(app, "src"), { recursive: true });
  // npm 11 asks for a dependency's install script to be approved; a tarball is known by its file: URL.
  writeFileSync(join(app, "package.json"), JSON.stringify({ name: "app", private: true, type: "module", allowScripts: { [`file:${tarball}`]: true } }));
  const installed = npm(["install", "--no-audit", "--no-fund", "--offline", "--ignore-scripts=false", "--foreground-scripts", tarball], app);
  assert.equal(installed.status, 0, `npm install:\n${installed.stdout}${installed.stderr}`);
  const here = join(app, "node_modules", "pants-ts");
  if (builtHere) {
    // The install script found that the prebuilt addon loads here, and built nothing.
    assert.ok(existsSync(join(here, PREBUILT)), "the prebuilt addon is installed");
    assert.ok(!existsSync(join(here, "build")), `the install script built nothing; npm install said:\n${installed.stdout}${installed.stderr}`);
  }

  writeFileSync(join(app, "src", "main.ts"), MAIN_TS);
  writeFileSync(join(app, "src", "echo.ts"), ECHO_TS);
  const compilerOptions = {
    target: "ES2022",
    strict: true,
    skipLibCheck: false,
    rootDir: "src",
    outDir: "dist",
    // Node's types from this repository: the app has no registry access.
    typeRoots: [join(root, "node_modules", "@types")],
    types: ["node"],
  };
  // A bundler's resolution first (types only), then Node's, which also emits what runs below.
  const configs = {
    "tsconfig.bundler.json": { ...compilerOptions, module: "esnext", moduleResolution: "bundler", noEmit: true },
    "tsconfig.json": { ...compilerOptions, module: "nodenext", moduleResolution: "nodenext" },
  };
  for (const [name, options] of Object.entries(configs)) {
    writeFileSync(join(app, name), JSON.stringify({ compilerOptions: options, include: ["src"] }));
    const tsc = spawnSync(process.execPath, [join(root, "node_modules", "typescript", "bin", "tsc"), "-p", join(app, name)], { cwd: app, encoding: "utf8", timeout: 50_000 });
    assert.equal(tsc.status, 0, `the consumer does not compile with ${name} (${options.module}):\n${tsc.stdout}${tsc.stderr}`);
  }

  const ran = spawnSync(process.execPath, [join(app, "dist", "main.js")], { cwd: app, encoding: "utf8", timeout: 20_000 });
  assert.equal(ran.status, 0, `the consumer failed:\n${ran.stdout}${ran.stderr}`);
  const expected = process.env.PANTS_TS_TRANSPORT ?? (builtHere ? "native" : "js");
  assert.deepEqual(JSON.parse(ran.stdout), { transport: expected, netstruct: "netstruct", memory: "guest: memory\n", reply: "guest: socket", nicks: ["guest"] });

  const bin = join(app, "node_modules", ".bin", "pants-ts");
  const version = spawnSync(process.execPath, [bin, "--version"], { cwd: app, encoding: "utf8", timeout: 20_000 });
  assert.equal(version.stdout.trim(), pkg.version, `pants-ts --version:\n${version.stdout}${version.stderr}`);
  // The app has no tsx: serving its .ts source says what is missing. (Node
  // 22.18+ and 23.6+ strip types themselves, and serve it: nothing to say,
  // unless it uses syntax that must be compiled, such as an enum.)
  if (!(process.features as { typescript?: unknown }).typescript) {
    const tsSource = spawnSync(process.execPath, [bin, "serve", "src/echo.ts", "--listen", "127.0.0.1:0"], { cwd: app, encoding: "utf8", timeout: 20_000 });
    assert.equal(tsSource.status, 1, `pants-ts serve src/echo.ts:\n${tsSource.stdout}${tsSource.stderr}`);
    assert.match(tsSource.stderr, /src\/echo\.ts is TypeScript and tsx is not installed: install it \(npm install -D tsx\)/);
  } else {
    mkdirSync(join(app, "strip"));
    writeFileSync(join(app, "strip", "enum-echo.ts"), 'import { Stream } from "pants-ts";\nenum Reply { Ok = "ok" }\nexport default class EnumEcho extends Stream {\n  override onRead(): void {\n    this.write(Reply.Ok);\n  }\n}\n');
    const enumSource = spawnSync(process.execPath, [bin, "serve", "strip/enum-echo.ts", "--listen", "127.0.0.1:0"], { cwd: app, encoding: "utf8", timeout: 20_000 });
    assert.equal(enumSource.status, 1, `pants-ts serve strip/enum-echo.ts:\n${enumSource.stdout}${enumSource.stderr}`);
    assert.match(enumSource.stderr, /strip\/enum-echo\.ts: .*enum.*; Node strips types only, and tsx, which compiles it, is not installed: install it \(npm install -D tsx\)/);
  }

  const served = spawn(process.execPath, [bin, "serve", "dist/echo.js", "--listen", "127.0.0.1:0"], { cwd: app, stdio: ["ignore", "pipe", "pipe"] });
  t.after(() => served.kill("SIGKILL"));
  const exited = new Promise<number | null>((resolve) => served.once("exit", (code) => resolve(code)));
  let out = "";
  served.stdout.on("data", (d) => (out += d));
  served.stderr.on("data", (d) => (out += d));
  await waitFor(() => /serving Echo on 127\.0\.0\.1:\d+/.test(out) || served.exitCode !== null, 20_000, `the banner of pants-ts serve; output: ${out}`);
  const port = Number(/serving Echo on 127\.0\.0\.1:(\d+)/.exec(out)?.[1]);
  assert.ok(port > 0, `pants-ts serve: ${out}`);
  const echoed = await new Promise<string>((resolve, reject) => {
    let text = "";
    const c = net.connect(port, "127.0.0.1", () => c.end("hi\n"));
    c.setEncoding("utf8");
    c.on("data", (d: string) => (text += d));
    c.on("error", reject);
    c.on("close", () => resolve(text));
  });
  assert.equal(echoed, "echo hi\n");
  served.kill("SIGTERM");
  assert.equal(await exited, 0, `pants-ts serve after SIGTERM: ${out}`);

  const tscCli = join(root, "node_modules", "typescript", "bin", "tsc");
  await t.test("a CommonJS consumer: TypeScript's default resolution finds pants-ts/testing (typesVersions), the .d.ts need no esModuleInterop, Node require()s the ES module", () => {
    // A folder of the app with its own package.json: pants-ts resolves from the app's node_modules.
    const cjs = join(app, "cjs");
    mkdirSync(join(cjs, "src"), { recursive: true });
    writeFileSync(join(cjs, "package.json"), JSON.stringify({ name: "cjs", private: true, type: "commonjs" }));
    writeFileSync(join(cjs, "src", "main.ts"), CJS_TS);
    // module commonjs: TypeScript 5's default resolution (node10) knows no "exports", esModuleInterop is off.
    writeFileSync(join(cjs, "tsconfig.json"), JSON.stringify({ compilerOptions: { ...compilerOptions, module: "commonjs" }, include: ["src"] }));
    const compiled = spawnSync(process.execPath, [tscCli, "-p", join(cjs, "tsconfig.json")], { cwd: cjs, encoding: "utf8", timeout: 50_000 });
    assert.equal(compiled.status, 0, `the CommonJS consumer does not compile:\n${compiled.stdout}${compiled.stderr}`);
    const js = readFileSync(join(cjs, "dist", "main.js"), "utf8");
    assert.match(js, /require\("pants-ts\/testing"\)/, "compiled to require() calls");
    const ran = spawnSync(process.execPath, [join(cjs, "dist", "main.js")], { cwd: cjs, encoding: "utf8", timeout: 20_000 });
    assert.equal(ran.status, 0, `the CommonJS consumer failed:\n${ran.stdout}${ran.stderr}`);
    assert.deepEqual(JSON.parse(ran.stdout), { memory: "echo memory\n", reply: "echo socket" });
  });

  /**
   * A new project `name` with `from` installed (its install script approved,
   * as npm 11 and 12 want; run only if `scripts`), and the consumer compiled
   * above beside it: `run()` starts that as a user would (PANTS_TS_TRANSPORT
   * unset), `run(transport)` with it set; `transport()` is what it ran on.
   */
  const project = (name: string, from: string, scripts: boolean) => {
    const cwd = join(dir, name);
    mkdirSync(cwd);
    writeFileSync(join(cwd, "package.json"), JSON.stringify({ name, private: true, type: "module", allowScripts: { [`file:${from}`]: true } }));
    const installed = npm(["install", "--no-audit", "--no-fund", "--offline", `--ignore-scripts=${!scripts}`, "--foreground-scripts", from], cwd);
    assert.equal(installed.status, 0, `npm install in ${name}:\n${installed.stdout}${installed.stderr}`);
    writeFileSync(join(cwd, "main.js"), readFileSync(join(app, "dist", "main.js")));
    const env: NodeJS.ProcessEnv = { ...process.env };
    delete env.PANTS_TS_TRANSPORT;
    const run = (transport?: string) => spawnSync(process.execPath, ["main.js"], { cwd, env: transport === undefined ? env : { ...env, PANTS_TS_TRANSPORT: transport }, encoding: "utf8", timeout: 20_000 });
    const transport = (): string => {
      const ran = run();
      assert.equal(ran.status, 0, `the consumer in ${name} failed:\n${ran.stdout}${ran.stderr}`);
      return (JSON.parse(ran.stdout) as { transport: string }).transport;
    };
    return { cwd, here: join(cwd, "node_modules", "pants-ts"), installed, run, transport };
  };

  await t.test("installed with --ignore-scripts (npm 12's default for an unapproved package): the prebuilt addon serves; without one, the app runs on node:net, and asking for native says how to build it", () => {
    const bare = project("bare", tarball, false);
    assert.ok(!existsSync(join(bare.here, "build")), "no addon was built");
    if (builtHere) {
      assert.equal(bare.transport(), "native", "no install script ran, and the prebuilt addon serves");
      // In a git checkout the prebuilt copy is never taken (one left by npm pack may be older than native/).
      mkdirSync(join(bare.here, ".git"));
      assert.equal(bare.transport(), "js", "a checkout with no build of its own runs on node:net");
      rmSync(join(bare.here, ".git"), { recursive: true });
      // A platform the package carries no addon for.
      rmSync(join(bare.here, "prebuilds"), { recursive: true });
    }
    const ran = bare.run();
    assert.equal(ran.status, 0, `the consumer without the addon failed:\n${ran.stdout}${ran.stderr}`);
    assert.deepEqual(JSON.parse(ran.stdout), { transport: "js", netstruct: "netstruct", memory: "guest: memory\n", reply: "guest: socket", nicks: ["guest"] });
    // The reason (also the banner of pants-ts serve) names a command that works in an application.
    const native = bare.run("native");
    assert.notEqual(native.status, 0);
    assert.match(native.stderr, /ERR_NATIVE_UNAVAILABLE/);
    // npm 12 skips the build until the application approves it: the hint names both steps.
    assert.match(native.stderr, /npm install-scripts approve pants-ts, then npm rebuild pants-ts/, native.stderr);
    assert.match(native.stderr, new RegExp(`no prebuilt one for ${process.platform}-${process.arch}`), native.stderr);
  });

  await t.test("a prebuilt addon that does not load here: the transport falls back to node:net and says why; the install script builds the addon instead", { skip: !builtHere && "no addon builds in this checkout" }, () => {
    const broken = project("broken", tarball, false);
    writeFileSync(join(broken.here, PREBUILT), "not an ELF file\n");
    assert.equal(broken.transport(), "js");
    const asked = broken.run("native");
    assert.match(asked.stderr, /the native addon failed to load \(.*pants_native\.node failed to load: .*; to build it here, npm 12 runs/, asked.stderr);
    const rebuilt = npm(["rebuild", "pants-ts", "--ignore-scripts=false", "--foreground-scripts"], broken.cwd);
    assert.equal(rebuilt.status, 0, `npm rebuild:\n${rebuilt.stdout}${rebuilt.stderr}`);
    assert.match(rebuilt.stdout + rebuilt.stderr, /the prebuilt addon does not load here .*; building it from the sources/);
    assert.ok(existsSync(join(broken.here, "build", "Release", "pants_native.node")), `npm rebuild built the addon:\n${rebuilt.stdout}${rebuilt.stderr}`);
    assert.equal(broken.transport(), "native");
  });

  await t.test("a package with no prebuilt addon for this platform: the install script builds it from the sources", { skip: !builtHere && "no addon builds in this checkout" }, () => {
    const source = project("source", plain.tarball, true);
    assert.ok(!existsSync(join(source.here, "prebuilds")), "this package carries no prebuilt addon");
    assert.ok(existsSync(join(source.here, "build", "Release", "pants_native.node")), `the addon builds where this repository's did; npm install said:\n${source.installed.stdout}${source.installed.stderr}`);
    assert.equal(source.transport(), "native");
  });
});

test("native/install.cjs run outside npm, with a prebuilt addon that does not load and no node-gyp on PATH: it says why each failed, and exits 0", { timeout: 30_000 }, (t) => {
  // A package directory as installed (no .git), holding only the script and a broken prebuilt addon.
  const dir = tempDir(t, "pants-ts-install-");
  mkdirSync(join(dir, "native"));
  writeFileSync(join(dir, "native", "install.cjs"), readFileSync(join(root, "native", "install.cjs")));
  mkdirSync(join(dir, PREBUILT, ".."), { recursive: true });
  writeFileSync(join(dir, PREBUILT), "not an ELF file\n");
  const emptyBin = join(dir, "bin");
  mkdirSync(emptyBin);
  const ran = spawnSync(process.execPath, [join(dir, "native", "install.cjs")], { cwd: dir, env: { ...process.env, PATH: emptyBin }, encoding: "utf8", timeout: 20_000 });
  assert.equal(ran.status, 0, `install.cjs:\n${ran.stdout}${ran.stderr}`);
  // The loader's own message, which names the file (not the line of Node's loader that threw).
  assert.match(ran.stderr, /the prebuilt addon does not load here \([^)]*pants_native\.node[^)]*\); building it from the sources/, ran.stderr);
  assert.match(ran.stderr, /the native addon could not be built \([^)]*ENOENT[^)]*\); the JS transport \(node:net\) will be used/, ran.stderr);
});

test("native/install.cjs where the loader refuses the prebuilt addon (Linux but not glibc, as under musl): it builds from the sources, though the addon loads", { skip: !existsSync(join(root, "build", "Release", "pants_native.node")) && "no addon builds in this checkout", timeout: 30_000 }, (t) => {
  const dir = tempDir(t, "pants-ts-install-");
  mkdirSync(join(dir, "native"));
  writeFileSync(join(dir, "native", "install.cjs"), readFileSync(join(root, "native", "install.cjs")));
  mkdirSync(join(dir, PREBUILT, ".."), { recursive: true });
  writeFileSync(join(dir, PREBUILT), readFileSync(join(root, "build", "Release", "pants_native.node")));
  // The loader's test for glibc (the report's glibcVersionRuntime) made to fail, in this node and its children.
  const noGlibc = join(dir, "no-glibc.cjs");
  writeFileSync(noGlibc, "const real = process.report.getReport.bind(process.report);\nprocess.report.getReport = (...args) => {\n  const report = real(...args);\n  delete report.header.glibcVersionRuntime;\n  return report;\n};\n");
  const emptyBin = join(dir, "bin");
  mkdirSync(emptyBin);
  const env = { ...process.env, PATH: emptyBin, NODE_OPTIONS: `--require ${JSON.stringify(noGlibc)}` };
  const ran = spawnSync(process.execPath, [join(dir, "native", "install.cjs")], { cwd: dir, env, encoding: "utf8", timeout: 20_000 });
  assert.equal(ran.status, 0, `install.cjs:\n${ran.stdout}${ran.stderr}`);
  if (process.platform === "linux") {
    // Before, the prebuilt addon loaded in the probe, nothing was built, and the loader then refused it: node:net, and a hint (npm rebuild) that built nothing either.
    assert.match(ran.stderr, /the prebuilt addon is not for this platform \(it is linked against glibc, and this C library is another \(musl\?\)\); building it from the sources/, ran.stderr);
    assert.match(ran.stderr, /the native addon could not be built \([^)]*ENOENT[^)]*\)/, ran.stderr);
  } else assert.equal(ran.stderr, "", "elsewhere the prebuilt addon that loads is kept");
});
