/**
 * `AbortSignal` options: checked once, and a listener that the operation
 * removes when it completes, so one long-lived signal given to many
 * operations does not collect a listener for each.
 */
import { describe, typeError } from "./errors.js";

/**
 * @internal `value` when it is an `AbortSignal` (or undefined: none given).
 * Told by its shape, as node:net does, not by `instanceof`: a polyfill's
 * signal (the `abort-controller` package) works too.
 * @throws TypeError (`ERR_INVALID_ARG_TYPE`) for anything else.
 */
export function checkSignal(where: string, value: unknown): AbortSignal | undefined {
  if (value === undefined || value instanceof AbortSignal) return value;
  const like = value as Partial<Record<"aborted" | "addEventListener" | "removeEventListener", unknown>> | null;
  if (
    typeof like === "object" &&
    like !== null &&
    typeof like.aborted === "boolean" &&
    typeof like.addEventListener === "function" &&
    typeof like.removeEventListener === "function"
  ) {
    return value as AbortSignal;
  }
  throw typeError(`${where} signal must be an AbortSignal, got ${describe(value)}.`);
}

/** The operations waiting on one signal, and the one listener that calls them. */
interface Waiters {
  readonly calls: Set<() => void>;
  readonly listener: () => void;
}

/**
 * The signals operations wait on. Each has one listener of ours however many
 * operations wait: eleven connects pending on an application's shutdown
 * signal would otherwise be eleven listeners, and Node warns of a leak
 * (MaxListenersExceededWarning) at the eleventh.
 */
const waiting = new WeakMap<AbortSignal, Waiters>();

/**
 * @internal Calls `fn` once when `signal` aborts; returns what removes it
 * (call it when the operation completes; calling it again is harmless). The
 * signal has our listener only while some operation waits.
 */
export function onAbort(signal: AbortSignal, fn: () => void): () => void {
  let waiters = waiting.get(signal);
  if (waiters === undefined) {
    const calls = new Set<() => void>();
    const listener = (): void => {
      waiting.delete(signal);
      // As separate listeners would be: in the order they came, one removed
      // by an earlier one's call is skipped, and one that throws stops no other.
      for (const call of [...calls]) {
        if (!calls.delete(call)) continue;
        try {
          call();
        } catch (err) {
          process.nextTick(rethrow, err);
        }
      }
    };
    waiters = { calls, listener };
    waiting.set(signal, waiters);
    signal.addEventListener("abort", listener, { once: true });
  }
  const mine = waiters;
  const call = (): void => fn(); // its own identity, whatever fn is
  mine.calls.add(call);
  return () => {
    if (!mine.calls.delete(call) || mine.calls.size > 0 || waiting.get(signal) !== mine) return;
    waiting.delete(signal);
    signal.removeEventListener("abort", mine.listener);
  };
}

/** A listener's exception, reported as an EventTarget reports one: uncaught, on a later tick. */
function rethrow(err: unknown): never {
  throw err;
}
