/** Markdown tables of the measurements: one per scenario, a summary, and the load generator check. */
import { SIDES, SIDE_LABEL } from "./scenarios.js";
import type { Sample, Scenario, Side } from "./scenarios.js";

/** One run of one side of one scenario: a sample, or why there is none. */
export interface Measurement {
  readonly scenario: string;
  readonly side: Side;
  readonly rep: number;
  readonly sample?: Sample;
  readonly error?: string;
}

/** A client at this share of its core (or above) may have been the bottleneck. */
export const CLIENT_SATURATED = 90;
/** Other load (or steal) on the machine above this share of a core makes a run unreliable. */
export const NOISY = 15;

export function median(values: readonly number[]): number | null {
  const xs = values.filter((v) => Number.isFinite(v)).sort((a, b) => a - b);
  if (xs.length === 0) return null;
  const mid = xs.length >> 1;
  return xs.length % 2 === 1 ? xs[mid]! : (xs[mid - 1]! + xs[mid]!) / 2;
}

export function fmt(value: number | null | undefined, digits?: number): string {
  if (value === null || value === undefined || !Number.isFinite(value)) return "-";
  const d = digits ?? (Math.abs(value) >= 100 ? 0 : Math.abs(value) >= 10 ? 1 : 2);
  return value.toLocaleString("en-US", { minimumFractionDigits: d, maximumFractionDigits: d });
}

function samplesOf(rows: readonly Measurement[], scenario: string, side: Side): Sample[] {
  return rows.filter((r) => r.scenario === scenario && r.side === side && r.sample !== undefined).map((r) => r.sample!);
}

function failuresOf(rows: readonly Measurement[], scenario: string, side: Side): string[] {
  return rows.filter((r) => r.scenario === scenario && r.side === side && r.error !== undefined).map((r) => r.error!);
}

function medianOf(samples: readonly Sample[], pick: (s: Sample) => number | undefined): number | null {
  return median(samples.map(pick).filter((v): v is number => v !== undefined));
}

/** The medians of one side of one scenario. */
export interface SideSummary {
  readonly value: number | null;
  readonly serverCpu: number | null;
  readonly clientCpu: number | null;
  readonly foreignCpu: number | null;
  readonly stealCpu: number | null;
  readonly runs: number;
  readonly failures: readonly string[];
}

export function summarize(rows: readonly Measurement[], scenario: string, side: Side): SideSummary {
  const samples = samplesOf(rows, scenario, side);
  return {
    value: medianOf(samples, (s) => s.value),
    serverCpu: medianOf(samples, (s) => s.serverCpu),
    clientCpu: medianOf(samples, (s) => s.clientCpu),
    foreignCpu: medianOf(samples, (s) => s.foreignCpu),
    stealCpu: medianOf(samples, (s) => s.stealCpu),
    runs: samples.length,
    failures: failuresOf(rows, scenario, side),
  };
}

export function ratio(scenario: string, rows: readonly Measurement[]): number | null {
  const raw = summarize(rows, scenario, "raw").value;
  const pants = summarize(rows, scenario, "pants").value;
  return raw !== null && pants !== null && raw !== 0 ? pants / raw : null;
}

/** The table of one scenario: every figure, median over the runs. */
export function scenarioTable(scenario: Scenario, rows: readonly Measurement[], clientCommand: string): string {
  const better = scenario.lowerIsBetter ? "lower is better" : "higher is better";
  const out = [`### ${scenario.name}: ${scenario.title}`, "", `${scenario.unit} (${better}); client: \`${clientCommand}\``, ""];
  const bySide = SIDES.map((side) => ({ side, samples: samplesOf(rows, scenario.name, side), failures: failuresOf(rows, scenario.name, side) }));
  const all = bySide.flatMap((b) => b.samples);
  const has = (pick: (s: Sample) => number | undefined) => all.some((s) => pick(s) !== undefined);
  const columns: Array<{ label: string; cell: (samples: Sample[]) => string }> = [
    { label: `${scenario.unit} (median)`, cell: (ss) => fmt(medianOf(ss, (s) => s.value)) },
    {
      label: "min..max",
      cell: (ss) => `${fmt(Math.min(...ss.map((s) => s.value)))}..${fmt(Math.max(...ss.map((s) => s.value)))}`,
    },
  ];
  for (const extra of scenario.extras ?? []) {
    columns.push({ label: extra.label, cell: (ss) => fmt(medianOf(ss, (s) => s.extra[extra.key]), extra.digits) });
  }
  if (has((s) => s.p50Us)) columns.push({ label: "p50 µs", cell: (ss) => fmt(medianOf(ss, (s) => s.p50Us)) });
  if (has((s) => s.p99Us)) columns.push({ label: "p99 µs", cell: (ss) => fmt(medianOf(ss, (s) => s.p99Us)) });
  if (has((s) => s.serverCpu)) columns.push({ label: "server CPU %", cell: (ss) => fmt(medianOf(ss, (s) => s.serverCpu), 0) });
  if (has((s) => s.clientCpu)) columns.push({ label: "client CPU %", cell: (ss) => fmt(medianOf(ss, (s) => s.clientCpu), 0) });
  if (has((s) => s.foreignCpu)) columns.push({ label: "other CPU %", cell: (ss) => fmt(medianOf(ss, (s) => s.foreignCpu), 0) });
  if (has((s) => s.stealCpu)) columns.push({ label: "steal %", cell: (ss) => fmt(medianOf(ss, (s) => s.stealCpu), 0) });
  columns.push({ label: "errors", cell: (ss) => String(ss.reduce((sum, s) => sum + s.errors, 0)) });
  columns.push({ label: "runs", cell: (ss) => String(ss.length) });

  out.push(`| server | ${columns.map((c) => c.label).join(" | ")} |`);
  out.push(`|---|${columns.map(() => "---:").join("|")}|`);
  for (const { side, samples, failures } of bySide) {
    if (samples.length === 0) {
      out.push(`| ${SIDE_LABEL[side]} | FAILED: ${(failures[0] ?? "no run").replace(/\s+/g, " ").replace(/\|/g, "/").slice(0, 200)} |`);
      continue;
    }
    out.push(`| ${SIDE_LABEL[side]} | ${columns.map((c) => c.cell(samples)).join(" | ")} |`);
  }
  for (const { side, samples, failures } of bySide) {
    if (samples.length > 0 && failures.length > 0) out.push("", `${SIDE_LABEL[side]}: ${failures.length} failed run(s): ${failures[0]!.slice(0, 300)}`);
  }
  if (scenario.sameOnBothSides !== undefined) {
    const key = scenario.sameOnBothSides;
    const seen = new Set(all.map((s) => s.extra[key]));
    if (seen.size > 1) out.push("", `WARNING: the two sides framed different contents (${key}: ${[...seen].join(" vs ")}).`);
  }
  const r = ratio(scenario.name, rows);
  if (r !== null) out.push("", `pants-ts / raw node = **${r.toFixed(2)}**`);
  return out.join("\n");
}

/** `scenario | raw node | pants-ts | ratio (pants/raw)`, one line per scenario. */
export function summaryTable(scenarios: readonly Scenario[], rows: readonly Measurement[]): string {
  const out = ["| scenario | raw node | pants-ts | ratio (pants/raw) |", "|---|---:|---:|---:|"];
  for (const s of scenarios) {
    const raw = summarize(rows, s.name, "raw");
    const pants = summarize(rows, s.name, "pants");
    const r = ratio(s.name, rows);
    const unit = s.lowerIsBetter ? `${s.unit}, lower is better` : s.unit;
    const cell = (v: SideSummary) => (v.value === null ? "FAILED" : fmt(v.value));
    out.push(`| ${s.name} (${unit}) | ${cell(raw)} | ${cell(pants)} | ${r === null ? "-" : r.toFixed(2)} |`);
  }
  return out.join("\n");
}

/**
 * Whether the load generator could have been the bottleneck (its CPU next
 * to the server's), and whether other load disturbed the run, per scenario
 * and side (medians).
 */
export function clientCheck(scenarios: readonly Scenario[], rows: readonly Measurement[]): { table: string; saturated: string[]; noisy: string[] } {
  const out = ["| scenario | side | server CPU % | client CPU % | other CPU % | steal % | verdict |", "|---|---|---:|---:|---:|---:|---|"];
  const saturated: string[] = [];
  const noisy: string[] = [];
  for (const s of scenarios) {
    for (const side of SIDES) {
      const v = summarize(rows, s.name, side);
      if (v.serverCpu === null && v.clientCpu === null && v.foreignCpu === null && v.stealCpu === null) continue;
      let verdict: string;
      if (v.serverCpu === null && v.clientCpu === null) {
        verdict = "in-process (no load generator)";
      } else if (v.clientCpu !== null && v.clientCpu >= CLIENT_SATURATED && (v.serverCpu === null || v.clientCpu > v.serverCpu)) {
        verdict = "CLIENT-BOUND: the load generator saturated its core first";
        saturated.push(`${s.name} (${SIDE_LABEL[side]})`);
      } else if (v.serverCpu !== null && v.serverCpu >= CLIENT_SATURATED) {
        verdict = "server-bound";
      } else {
        verdict = "neither core saturated (round-trip bound)";
      }
      if ((v.foreignCpu ?? 0) > NOISY || (v.stealCpu ?? 0) > NOISY) {
        verdict += "; DISTURBED by other load";
        noisy.push(`${s.name} (${SIDE_LABEL[side]})`);
      }
      out.push(`| ${s.name} | ${SIDE_LABEL[side]} | ${fmt(v.serverCpu, 0)} | ${fmt(v.clientCpu, 0)} | ${fmt(v.foreignCpu, 0)} | ${fmt(v.stealCpu, 0)} | ${verdict} |`);
    }
  }
  return { table: out.join("\n"), saturated, noisy };
}
