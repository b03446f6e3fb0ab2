/**
 * One stress case: a fresh server child, a warm-up, a baseline health
 * report, the canary, the case itself, then the checks every case shares:
 *
 * - the server process is alive and answers;
 * - no uncaught exception, unhandled rejection or process warning;
 * - error log lines = exactly the deliberate handler failures (app.deliberate),
 *   a stream's later failures after its close being debug lines of their own,
 *   and the server counted exactly that many handler errors;
 * - no warn log line, unless the case names the ones it expects;
 * - the canary kept getting correct answers, byte for byte, in order, during
 *   and after the case, and the server saw its sequence numbers without a gap;
 * - afterwards every connection has closed, the descriptor count is back to
 *   the baseline, and (for cases that ask) the heap after a forced GC too.
 */
import { Canary } from "./canary.js";
import type { CanaryReport } from "./canary.js";
import { CANARY_PROXY_GREETING, CANARY_PROXY_HEADER } from "./clients.js";
import type { DialSpec } from "./clients.js";
import { codecFor } from "./codecs.js";
import type { Codec } from "./codecs.js";
import type { StressCert } from "./certs.js";
import { ServerProcess } from "./proc.js";
import type { Nofile } from "./proc.js";
import type { Health, Scenario, ServerConfig } from "./protocol.js";
import { mib, withTimeout } from "./util.js";

/** What every case gets from the campaign. */
export interface CampaignEnv {
  quick: boolean;
  /** A TLS certificate, or null if openssl is missing (TLS cases are skipped). */
  cert: StressCert | null;
}

/** How a case's server is started. */
export interface ServerPlan {
  scenario: Scenario;
  config: ServerConfig;
  nofile?: Nofile;
  /** The framing the canary speaks (default "lf"). */
  canary?: Parameters<typeof codecFor>[0];
}

/** One check of a case. */
export interface Check {
  name: string;
  ok: boolean;
  detail: string;
}

/** What a case's body can use. */
export interface CaseContext {
  readonly env: CampaignEnv;
  readonly quick: boolean;
  readonly server: ServerProcess;
  /** The health report taken after the warm-up (after a forced GC). */
  readonly baseline: Health;
  /** How a well-behaved client reaches this server. */
  readonly dialSpec: DialSpec;
  readonly codec: Codec;
  /** Records a check; the case held only if all its checks did. */
  check(name: string, ok: boolean, detail?: string): void;
  /** Adds to the "result" column. */
  note(text: string): void;
}

export interface CaseSpec {
  name: string;
  group: "load" | "faults" | "hostile";
  /** Part of the --quick subset. */
  quick: boolean;
  /** The "what was tried" column. */
  what(env: CampaignEnv): string;
  /** Skipped (with this reason) when it returns a string. */
  skip?(env: CampaignEnv): string | null;
  server(env: CampaignEnv): ServerPlan;
  /** Warn log lines the case provokes on purpose (e.g. the EMFILE warning); any other warn fails it. */
  allowWarn?: (line: string) => boolean;
  /** Compare the heap after a forced GC with the baseline. */
  checkHeap?: boolean;
  /** Descriptors allowed above the baseline afterwards (default 0). */
  fdTolerance?: number;
  /** The case body's own deadline. */
  timeoutMs(env: CampaignEnv): number;
  run(ctx: CaseContext): Promise<void>;
}

export interface CaseResult {
  name: string;
  group: string;
  what: string;
  result: string;
  held: boolean;
  skipped: string | null;
  checks: Check[];
  seconds: number;
  baseline: Health | null;
  after: Health | null;
  canary: CanaryReport | null;
  serverStderr: string;
}

/** Heap growth allowed after a case, beyond the baseline (after a forced GC on both sides). */
export const HEAP_TOLERANCE_BYTES = 4 * 1024 * 1024;
export const HEAP_TOLERANCE_RATIO = 0.25;
/** How long the connections of a case may take to close after it. */
const SETTLE_MS = 30_000;

function dialFor(plan: ServerPlan, port: number, env: CampaignEnv): DialSpec {
  const spec: DialSpec = { port };
  if (plan.config.tls !== undefined && env.cert !== null) spec.tlsCa = env.cert.certPem;
  if (plan.config.proxyProtocol === true) spec.proxyHeader = CANARY_PROXY_HEADER;
  return spec;
}

export async function runCase(spec: CaseSpec, env: CampaignEnv): Promise<CaseResult> {
  const t0 = Date.now();
  const checks: Check[] = [];
  const notes: string[] = [];
  const result: CaseResult = {
    name: spec.name,
    group: spec.group,
    what: spec.what(env),
    result: "",
    held: false,
    skipped: null,
    checks,
    seconds: 0,
    baseline: null,
    after: null,
    canary: null,
    serverStderr: "",
  };
  const skip = spec.skip?.(env) ?? null;
  if (skip !== null) {
    result.skipped = skip;
    result.held = true;
    result.result = `skipped: ${skip}`;
    return result;
  }
  const check = (name: string, ok: boolean, detail = ""): void => {
    checks.push({ name, ok, detail });
  };
  const plan = spec.server(env);
  let server: ServerProcess | null = null;
  let canary: Canary | null = null;
  try {
    server = await ServerProcess.start(plan.scenario, plan.config, plan.nofile ?? "max");
    const dialSpec = dialFor(plan, server.port, env);
    const codec = codecFor(plan.canary ?? "lf", 7);
    const greeting = plan.config.proxyProtocol === true ? CANARY_PROXY_GREETING : null;

    // Warm-up: the code paths compiled, the first allocations made, before the baseline.
    const warm = await new Canary(dialSpec, codecFor(plan.canary ?? "lf", 3), greeting, 50).start().done();
    if (warm.failures.length > 0) throw new Error(`warm-up failed: ${warm.failures.join("; ")}`);
    await server.waitFor((h) => h.open === 0, SETTLE_MS);
    const baseline = await server.health({ gc: true, resetPeak: true });
    result.baseline = baseline;

    canary = new Canary(dialSpec, codec, greeting).start();
    const ctx: CaseContext = {
      env,
      quick: env.quick,
      server,
      baseline,
      dialSpec,
      codec,
      check,
      note: (text) => notes.push(text),
    };
    try {
      await withTimeout(spec.run(ctx), spec.timeoutMs(env), `the case`);
    } catch (err) {
      check("case ran to the end", false, (err as Error).message);
    }
    const canaryReport = await canary.stop();
    canary = null;
    result.canary = canaryReport;
    check(
      "canary answered correctly throughout",
      canaryReport.failures.length === 0,
      `${canaryReport.roundTrips} round trips${canaryReport.failures.length > 0 ? `; ${canaryReport.failures.join("; ")}` : ""}`,
    );

    // Afterwards: everything closed, resources back.
    const settled = await server.waitFor((h) => h.open === 0, SETTLE_MS);
    check("every connection closed afterwards", settled.open === 0, `${settled.open} still open`);
    const fdTolerance = spec.fdTolerance ?? 0;
    const after = await server.waitFor((h) => h.fds >= 0 && h.fds <= baseline.fds + fdTolerance, 5000, 200);
    const afterGc = await server.health({ gc: true });
    result.after = afterGc;
    check(
      "descriptors back to baseline",
      after.fds >= 0 && afterGc.fds <= baseline.fds + fdTolerance,
      `${baseline.fds} → ${afterGc.fds}${fdTolerance > 0 ? ` (tolerance ${fdTolerance})` : ""}`,
    );
    notes.push(
      `canary ${canaryReport.roundTrips} round trips; server fds ${baseline.fds}→${afterGc.fds}` +
        (spec.checkHeap === true ? `, heap after GC ${mib(baseline.memory.heapUsed)}→${mib(afterGc.memory.heapUsed)}` : ""),
    );
    if (spec.checkHeap === true) {
      const limit = baseline.memory.heapUsed * (1 + HEAP_TOLERANCE_RATIO) + HEAP_TOLERANCE_BYTES;
      check(
        "heap back to baseline (after GC)",
        afterGc.memory.heapUsed <= limit,
        `${mib(baseline.memory.heapUsed)} → ${mib(afterGc.memory.heapUsed)} (limit ${mib(limit)})`,
      );
    }
    commonChecks(spec, afterGc, check);
  } catch (err) {
    check("case set up and finished", false, (err as Error).message);
  } finally {
    if (canary !== null) await canary.stop().catch(() => undefined);
    if (server !== null) {
      check("server process never crashed", server.alive && server.exitInfo === null, server.exitInfo ?? "alive");
      result.serverStderr = server.stderr;
      await server.stop();
    }
  }
  result.seconds = (Date.now() - t0) / 1000;
  result.held = checks.every((c) => c.ok);
  result.result = notes.join("; ");
  return result;
}

function commonChecks(spec: CaseSpec, h: Health, check: (name: string, ok: boolean, detail?: string) => void): void {
  check(
    "no uncaught exception, unhandled rejection or process warning",
    h.uncaught === 0 && h.unhandled === 0 && h.processWarnings === 0,
    `${h.uncaught} uncaught, ${h.unhandled} unhandled, ${h.processWarnings} warnings${h.faultSamples.length > 0 ? `: ${h.faultSamples.join(" | ")}` : ""}`,
  );
  const deliberate = h.app["deliberate"] ?? 0;
  const errorSamples = h.logSamples.filter((s) => s.startsWith("error:"));
  // A stream's handler failing again after its close is logged at debug (one error line per stream, not per frame).
  const logged = h.logs.error + h.logs.repeatFailures;
  check(
    "error log lines (+ repeats after the close, at debug) = deliberate handler failures",
    logged === deliberate,
    `${h.logs.error} error lines + ${h.logs.repeatFailures} repeats, ${deliberate} deliberate${logged !== deliberate && errorSamples.length > 0 ? `: ${errorSamples.slice(0, 3).join(" | ")}` : ""}`,
  );
  check(
    "handler errors counted = deliberate failures",
    (h.stats.errorsByKind["handler"] ?? 0) === deliberate,
    `${h.stats.errorsByKind["handler"] ?? 0} counted, ${deliberate} deliberate`,
  );
  const warnSamples = h.logSamples.filter((s) => s.startsWith("warn:"));
  const allowed = spec.allowWarn;
  // With allowed warnings, every sampled warn line (the first few) must be one of them.
  const unexpected = allowed === undefined ? warnSamples : warnSamples.filter((s) => !allowed(s.slice(6)));
  const warnOk = allowed === undefined ? h.logs.warn === 0 : unexpected.length === 0;
  check(
    "no warn log line for client misbehaviour",
    warnOk,
    `${h.logs.warn} warn lines${unexpected.length > 0 ? `: ${unexpected.slice(0, 3).join(" | ")}` : ""}`,
  );
  const canaryLines = h.app["canaryLines"] ?? 0;
  if (canaryLines > 0) {
    const seqErrors = h.app["seqErrors"] ?? 0;
    check("server saw the canary's lines in order, once each", seqErrors === 0, `${canaryLines} lines, ${seqErrors} sequence errors`);
  }
  const zombies = h.app["zombieHandlers"] ?? 0;
  if (zombies > 0 || spec.name.startsWith("handler")) {
    check("no handler ran on an instance whose constructor threw", zombies === 0, `${zombies} handler calls`);
  }
}
