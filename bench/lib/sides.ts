/**
 * The sides of the benchmark, i.e. the columns of its tables: raw node, the
 * two pants-ts transports, uvloop, and redis-server (the redis scenario's
 * reference). A side can be unavailable on a machine (no addon, no uvloop,
 * no redis-server); `probeSides` finds out which and why.
 */
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { LiveProcess, benchEnv, which } from "./proc.js";

export type Side = "raw" | "js" | "native" | "uvloop" | "redis";

/** Every side, in column order. */
export const ALL_SIDES: readonly Side[] = ["raw", "js", "native", "uvloop", "redis"];

/** The sides of a plain TCP scenario: raw node, pants-ts on both transports, uvloop. */
export const NET_SIDES: readonly Side[] = ["raw", "js", "native", "uvloop"];

export const SIDE_LABEL: Record<Side, string> = {
  raw: "raw node",
  js: "pants-ts js",
  native: "pants-ts native",
  uvloop: "uvloop",
  redis: "redis-server",
};

/** What a side is, for the report's header. */
export const SIDE_WHAT: Record<Side, string> = {
  raw: "hand-written servers on node:net / node:tls",
  js: "pants-ts with PANTS_TS_TRANSPORT=js (node:net)",
  native: "pants-ts with PANTS_TS_TRANSPORT=native (the libuv addon)",
  uvloop: "asyncio Protocol servers on uvloop (bench/servers/uvloop_server.py)",
  redis: "a real redis-server (the redis scenario only)",
};

/** The system python: Debian's python3-uvloop installs uvloop for it (a pyenv or venv python usually lacks it). */
export const PYTHON = "/usr/bin/python3";

/** The pants-ts native addon, as `npm install` builds it. */
export const ADDON = join("build", "Release", "pants_native.node");

/** A side that can run, with what it runs on; or why it cannot. */
export type SideStatus = { readonly ok: true; readonly version: string } | { readonly ok: false; readonly reason: string };

export interface ProbeInput {
  readonly root: string;
  readonly pantsServer: string;
  /** The sides to probe (those the selected scenarios use, as far as --sides allows); the others are "not selected". */
  readonly wanted: readonly Side[];
  /** Leave uvloop out (--quick without --sides). */
  readonly quick: boolean;
}

function firstLine(r: ReturnType<typeof spawnSync>): string {
  return `${String(r.stdout ?? "")}${String(r.stderr ?? "")}`.split("\n")[0]!.trim();
}

/** Starts the pants-ts echo server on the native transport once, to see that the addon loads and is used. */
async function probeNative(root: string, pantsServer: string): Promise<SideStatus> {
  if (!existsSync(join(root, ADDON))) {
    return { ok: false, reason: `the native addon is not built (${ADDON} is missing; npm install builds it when a C compiler is there, or npm run build:native)` };
  }
  const env = benchEnv({ PORT: "0", HOST: "127.0.0.1", SCENARIO: "echo-line", PANTS_TS_TRANSPORT: "native" });
  const proc = new LiveProcess([process.execPath, pantsServer], null, env);
  try {
    const line = await proc.waitForLine("READY ", 15_000, "the pants-ts server on the native transport");
    if (!line.includes("transport=native")) return { ok: false, reason: `the pants-ts server did not use the native transport (${line})` };
    return { ok: true, version: `libuv addon ${ADDON}` };
  } catch (err) {
    return { ok: false, reason: `the native transport does not start: ${(err as Error).message.split("\n")[0]!.slice(0, 300)}` };
  } finally {
    await proc.stop();
  }
}

function probeUvloop(): SideStatus {
  const r = spawnSync(PYTHON, ["-c", "import sys, uvloop; print(f'uvloop {uvloop.__version__}, Python {sys.version.split()[0]}')"], { encoding: "utf8" });
  if (r.error !== undefined || r.status !== 0) {
    const why = r.error !== undefined ? `${PYTHON} is missing` : `uvloop is not installed for ${PYTHON}`;
    return { ok: false, reason: `${why} (Debian: apt-get install python3-uvloop)` };
  }
  return { ok: true, version: `${firstLine(r)} (${PYTHON})` };
}

function probeRedis(): SideStatus {
  if (which("redis-server") === null) return { ok: false, reason: "redis-server is not installed (Debian: apt-get install redis-server)" };
  return { ok: true, version: firstLine(spawnSync("redis-server", ["--version"], { encoding: "utf8" })).replace(/ sha=.*$/, "") };
}

/** Which sides can run here, and on what (or why not). */
export async function probeSides(input: ProbeInput): Promise<Map<Side, SideStatus>> {
  const status = new Map<Side, SideStatus>();
  for (const side of ALL_SIDES) {
    if (!input.wanted.includes(side)) {
      status.set(side, { ok: false, reason: "not selected (--sides)" });
    } else if (side === "uvloop" && input.quick) {
      status.set(side, { ok: false, reason: "left out by --quick (add --sides raw,js,native,uvloop to run it)" });
    } else if (side === "native") {
      status.set(side, await probeNative(input.root, input.pantsServer));
    } else if (side === "uvloop") {
      status.set(side, probeUvloop());
    } else if (side === "redis") {
      status.set(side, probeRedis());
    } else {
      status.set(side, { ok: true, version: `node ${process.version}` });
    }
  }
  return status;
}

/** Rotates the order of the sides by repetition, so that each goes first in turn and slow drift of the machine hits all alike. */
export function sideOrder(sides: readonly Side[], rep: number): Side[] {
  const k = sides.length === 0 ? 0 : rep % sides.length;
  return [...sides.slice(k), ...sides.slice(0, k)];
}
