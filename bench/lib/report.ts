/** Markdown tables of the measurements: one per scenario, the summary, and the load generator check. */
import { sideLabel } from "./measure.js";
import type { Sample, Scenario } from "./measure.js";
import { ALL_SIDES, SIDE_LABEL } from "./sides.js";
import type { Side, SideStatus } from "./sides.js";

/** One run of one side of one scenario: a sample, or why there is none. */
export interface Measurement {
  readonly scenario: string;
  readonly side: Side;
  readonly rep: number;
  readonly sample?: Sample;
  readonly error?: string;
}

/** Everything a report is made of. */
export interface RunRecord {
  readonly scenarios: readonly Scenario[];
  readonly rows: readonly Measurement[];
  readonly sides: ReadonlyMap<Side, SideStatus>;
  /** Scenarios that could not run at all here, and why. */
  readonly skipped: ReadonlyMap<string, string>;
}

/** A client at this share of its core (or above) may have been the bottleneck. */
export const CLIENT_SATURATED = 90;
/** Other load (or steal) on the machine above this share of a core makes a run unreliable. */
export const NOISY = 15;

/** The ratios of the summary: [numerator, denominator]. */
export const RATIOS: ReadonlyArray<readonly [Side, Side]> = [
  ["js", "raw"],
  ["native", "raw"],
  ["native", "uvloop"],
];

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

/** The sides of a scenario that were measured (or tried) in this run, in column order. */
export function sidesRun(scenario: Scenario, rows: readonly Measurement[]): Side[] {
  return scenario.sides.filter((side) => rows.some((r) => r.scenario === scenario.name && r.side === side));
}

/** The medians of one side of one scenario. */
export interface SideSummary {
  readonly value: number | null;
  readonly serverCpu: number | null;
  readonly clientCpu: number | null;
  readonly foreignCpu: number | null;
  readonly stealCpu: number | null;
  /** Medians of the scenario's extra figures. */
  readonly extra: Record<string, number | null>;
  readonly runs: number;
  readonly failures: readonly string[];
}

export function summarize(rows: readonly Measurement[], scenario: Scenario, side: Side): SideSummary {
  const samples = samplesOf(rows, scenario.name, side);
  const extra: Record<string, number | null> = {};
  for (const key of new Set([...(scenario.extras ?? []).map((e) => e.key), ...(scenario.summaryRows ?? []).map((r) => r.key)])) {
    extra[key] = medianOf(samples, (s) => s.extra[key]);
  }
  return {
    value: medianOf(samples, (s) => s.value),
    serverCpu: medianOf(samples, (s) => s.serverCpu),
    clientCpu: medianOf(samples, (s) => s.clientCpu),
    foreignCpu: medianOf(samples, (s) => s.foreignCpu),
    stealCpu: medianOf(samples, (s) => s.stealCpu),
    extra,
    runs: samples.length,
    failures: failuresOf(rows, scenario.name, side),
  };
}

/** a / b of the medians of a figure (the headline, or an extra by key). */
export function ratio(rows: readonly Measurement[], scenario: Scenario, a: Side, b: Side, key?: string): number | null {
  const figure = (side: Side) => {
    const s = summarize(rows, scenario, side);
    return key === undefined ? s.value : (s.extra[key] ?? null);
  };
  const x = figure(a);
  const y = figure(b);
  return x !== null && y !== null && y !== 0 ? x / y : null;
}

function oneLine(text: string, max: number): string {
  return text.replace(/\s+/g, " ").replace(/\|/g, "/").slice(0, max);
}

/** The table of one scenario: every figure of every side, median over the runs. */
export function scenarioTable(scenario: Scenario, record: RunRecord, clientCommand: string): string {
  const better = scenario.lowerIsBetter ? "lower is better" : "higher is better";
  const out = [`### ${scenario.name}: ${scenario.title}`, ""];
  const skipped = record.skipped.get(scenario.name);
  if (skipped !== undefined) return [...out, `SKIPPED: ${skipped}`].join("\n");
  out.push(`${scenario.unit} (${better}); client: \`${clientCommand}\``, "");
  const rows = record.rows;
  const bySide = sidesRun(scenario, rows).map((side) => ({ side, samples: samplesOf(rows, scenario.name, side), failures: failuresOf(rows, scenario.name, side) }));
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
    if (has((s) => s.extra[extra.key])) columns.push({ label: extra.label, cell: (ss) => fmt(medianOf(ss, (s) => s.extra[extra.key]), extra.digits) });
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
      out.push(`| ${sideLabel(scenario, side)} | FAILED: ${oneLine(failures[0] ?? "no run", 200)} |`);
      continue;
    }
    out.push(`| ${sideLabel(scenario, side)} | ${columns.map((c) => c.cell(samples)).join(" | ")} |`);
  }
  const notes: string[] = [];
  for (const { side, samples, failures } of bySide) {
    if (samples.length > 0 && failures.length > 0) notes.push(`${sideLabel(scenario, side)}: ${failures.length} failed run(s): ${oneLine(failures[0]!, 300)}`);
  }
  for (const side of scenario.sides) {
    const status = record.sides.get(side);
    if (status !== undefined && !status.ok) notes.push(`${SIDE_LABEL[side]}: not run (${status.reason}).`);
  }
  if (scenario.sidesNote !== undefined) notes.push(`Note: ${scenario.sidesNote}.`);
  if (scenario.sameOnBothSides !== undefined) {
    const key = scenario.sameOnBothSides;
    const seen = new Set(all.map((s) => s.extra[key]));
    if (seen.size > 1) notes.push(`WARNING: the sides framed different contents (${key}: ${[...seen].join(" vs ")}).`);
  }
  const ratios = RATIOS.map(([a, b]) => [a, b, ratio(rows, scenario, a, b)] as const).filter(([, , r]) => r !== null);
  if (ratios.length > 0) notes.push(ratios.map(([a, b, r]) => `${sideLabel(scenario, a)} / ${sideLabel(scenario, b)} = **${r!.toFixed(2)}**`).join("; "));
  if (notes.length > 0) out.push("", notes.join("\n\n"));
  return out.join("\n");
}

/** The columns of the summary: the sides of the plain scenarios that ran here. */
function summarySides(record: RunRecord): Side[] {
  const ran = (side: Side) => record.sides.get(side)?.ok === true && record.scenarios.some((s) => s.sides.includes(side));
  return (["raw", "js", "native", "uvloop"] as const).filter((side) => side === "raw" || side === "js" || ran(side));
}

/**
 * `scenario | raw node | pants-ts js | pants-ts native | uvloop | js/raw |
 * native/raw | native/uvloop`, one line per scenario (per figure, for the
 * redis scenario); the native and uvloop columns only when they ran.
 */
export function summaryTable(record: RunRecord): string {
  const sides = summarySides(record);
  const ratios = RATIOS.filter(([a, b]) => sides.includes(a) && sides.includes(b));
  const out = [
    `| scenario | ${sides.map((s) => SIDE_LABEL[s]).join(" | ")} | ${ratios.map(([a, b]) => `${a}/${b}`).join(" | ")} |`,
    `|---|${sides.map(() => "---:").join("|")}|${ratios.map(() => "---:").join("|")}|`,
  ];
  for (const s of record.scenarios) {
    const skipped = record.skipped.has(s.name);
    const figures = s.summaryRows ?? [{ key: undefined, label: s.name }];
    const summaries = new Map(sides.map((side) => [side, summarize(record.rows, s, side)] as const));
    for (const { key, label } of figures) {
      const unit = s.lowerIsBetter ? `${s.unit}, lower is better` : s.unit;
      const cell = (side: Side) => {
        if (!s.sides.includes(side)) return "n/a";
        if (skipped) return "skipped";
        const summary = summaries.get(side)!;
        if (summary.runs === 0) return summary.failures.length > 0 ? "FAILED" : "-";
        return fmt(key === undefined ? summary.value : summary.extra[key]);
      };
      const ratioCell = ([a, b]: readonly [Side, Side]) => {
        const r = ratio(record.rows, s, a, b, key);
        return r === null ? "-" : r.toFixed(2);
      };
      out.push(`| ${label} (${unit}) | ${sides.map(cell).join(" | ")} | ${ratios.map(ratioCell).join(" | ")} |`);
    }
  }
  return out.join("\n");
}

/**
 * A table per scenario with a reference side outside the summary's columns
 * (redis-server for the redis scenario): every figure of every side, and the
 * native transport against the reference.
 */
export function referenceTables(record: RunRecord): string[] {
  const tables: string[] = [];
  for (const s of record.scenarios) {
    if (!s.sides.includes("redis") || record.skipped.has(s.name)) continue;
    const sides = sidesRun(s, record.rows);
    if (!sides.includes("redis")) continue;
    const figures = s.summaryRows ?? [{ key: undefined, label: s.name }];
    const pairs = ([["js", "redis"], ["native", "redis"]] as const).filter(([a]) => sides.includes(a));
    const out = [
      `| ${s.name} (${s.unit}) | ${sides.map((side) => SIDE_LABEL[side]).join(" | ")} | ${pairs.map(([a, b]) => `${a}/${b}`).join(" | ")} |`,
      `|---|${sides.map(() => "---:").join("|")}|${pairs.map(() => "---:").join("|")}|`,
    ];
    const summaries = new Map(sides.map((side) => [side, summarize(record.rows, s, side)] as const));
    for (const { key, label } of [...figures, { key: undefined, label: "all tests (harmonic mean)" }]) {
      const cell = (side: Side) => {
        const summary = summaries.get(side)!;
        if (summary.runs === 0) return "FAILED";
        return fmt(key === undefined ? summary.value : summary.extra[key]);
      };
      const ratioCell = ([a, b]: readonly [Side, Side]) => {
        const r = ratio(record.rows, s, a, b, key);
        return r === null ? "-" : r.toFixed(2);
      };
      out.push(`| ${label} | ${sides.map(cell).join(" | ")} | ${pairs.map(ratioCell).join(" | ")} |`);
    }
    tables.push(out.join("\n"));
  }
  return tables;
}

/**
 * The scenarios and sides whose figures came from runs that reported errors
 * (failed connects, broken connections, wrong replies), one line each: the
 * summary shows only medians, so without this such a figure would stand
 * there like a clean one.
 */
export function errorNotes(record: RunRecord): string[] {
  const lines: string[] = [];
  for (const s of record.scenarios) {
    for (const side of sidesRun(s, record.rows)) {
      const samples = samplesOf(record.rows, s.name, side);
      const errors = samples.reduce((sum, x) => sum + x.errors, 0);
      const runs = samples.filter((x) => x.errors > 0).length;
      if (errors > 0) lines.push(`- ${s.name} (${sideLabel(s, side)}): ${errors} error(s) in ${runs} of ${samples.length} run(s); its figure counts only what completed.`);
    }
  }
  return lines;
}

/** Why a column of the summary (or a reference side) is missing, one line each. */
export function missingSides(record: RunRecord): string[] {
  const lines: string[] = [];
  for (const side of ALL_SIDES) {
    const status = record.sides.get(side);
    if (status === undefined || status.ok || !record.scenarios.some((s) => s.sides.includes(side))) continue;
    lines.push(`- ${SIDE_LABEL[side]}: not run: ${status.reason}.`);
  }
  for (const [name, reason] of record.skipped) lines.push(`- ${name}: skipped: ${reason}.`);
  return lines;
}

/**
 * Whether the load generator could have been the bottleneck (its CPU next
 * to the server's), and whether other load disturbed the run, per scenario
 * and side (medians).
 */
export function clientCheck(record: RunRecord): { table: string; saturated: string[]; noisy: string[] } {
  const out = ["| scenario | side | server CPU % | client CPU % | other CPU % | steal % | verdict |", "|---|---|---:|---:|---:|---:|---|"];
  const saturated: string[] = [];
  const noisy: string[] = [];
  for (const s of record.scenarios) {
    for (const side of sidesRun(s, record.rows)) {
      const v = summarize(record.rows, s, side);
      if (v.serverCpu === null && v.clientCpu === null && v.foreignCpu === null && v.stealCpu === null) continue;
      const label = sideLabel(s, side);
      let verdict: string;
      if (v.serverCpu === null && v.clientCpu === null) {
        verdict = "no CPU figures (in-process, or a client that does not report them)";
      } else if (v.clientCpu !== null && v.clientCpu >= CLIENT_SATURATED && (v.serverCpu === null || v.clientCpu > v.serverCpu)) {
        verdict = "CLIENT-BOUND: the load generator saturated its core first";
        saturated.push(`${s.name} (${label})`);
      } else if (v.serverCpu !== null && v.serverCpu >= CLIENT_SATURATED) {
        verdict = "server-bound";
      } else {
        verdict = "neither core saturated (round-trip bound)";
      }
      if ((v.foreignCpu ?? 0) > NOISY || (v.stealCpu ?? 0) > NOISY) {
        verdict += "; DISTURBED by other load";
        noisy.push(`${s.name} (${label})`);
      }
      out.push(`| ${s.name} | ${label} | ${fmt(v.serverCpu, 0)} | ${fmt(v.clientCpu, 0)} | ${fmt(v.foreignCpu, 0)} | ${fmt(v.stealCpu, 0)} | ${verdict} |`);
    }
  }
  return { table: out.join("\n"), saturated, noisy };
}

/** The summary as data, for --json. */
export function summaryJson(record: RunRecord): unknown[] {
  return record.scenarios.map((s) => {
    const sides: Partial<Record<Side, SideSummary>> = {};
    for (const side of sidesRun(s, record.rows)) sides[side] = summarize(record.rows, s, side);
    const ratios: Record<string, number | null> = {};
    for (const [a, b] of RATIOS) if (s.sides.includes(a) && s.sides.includes(b)) ratios[`${a}/${b}`] = ratio(record.rows, s, a, b);
    return {
      scenario: s.name,
      unit: s.unit,
      lowerIsBetter: s.lowerIsBetter === true,
      skipped: record.skipped.get(s.name) ?? null,
      sides,
      ratios,
    };
  });
}
