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

/**
 * @internal Calls `fn` once when `signal` aborts; returns what removes the
 * listener (call it when the operation completes; calling it again is harmless).
 */
export function onAbort(signal: AbortSignal, fn: () => void): () => void {
  signal.addEventListener("abort", fn, { once: true });
  return () => signal.removeEventListener("abort", fn);
}
