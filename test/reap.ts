/**
 * A test file the runner stops (it sends SIGTERM when a test outlives
 * --test-timeout, Ctrl-C sends SIGINT) exits before its `t.after` cleanups
 * run, which would leave the servers its tests spawned running (a
 * `pants-ts serve --workers 8` once stayed 90 minutes). Imported for its
 * effect by every test file that spawns: on those signals it kills the
 * process's descendants, then exits as the signal would have.
 */
import { readFileSync } from "node:fs";

/** The child processes of `pid` (Linux: /proc; throws elsewhere, or when `pid` is gone). */
export function childrenOf(pid: number): number[] {
  return readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim().split(/\s+/).filter(Boolean).map(Number);
}

/** Every descendant of `pid`, children before theirs (none found where there is no /proc). */
function descendants(pid: number): number[] {
  let children: number[];
  try {
    children = childrenOf(pid);
  } catch {
    return [];
  }
  return children.flatMap((child) => [child, ...descendants(child)]);
}

function reap(signal: NodeJS.Signals, code: number): void {
  for (const pid of descendants(process.pid)) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // Gone already.
    }
  }
  process.stderr.write(`test process stopped by ${signal}: its child processes were killed\n`);
  process.exit(code);
}

process.once("SIGTERM", () => reap("SIGTERM", 143));
process.once("SIGINT", () => reap("SIGINT", 130));
