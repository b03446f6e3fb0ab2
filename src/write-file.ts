/**
 * writeFile: a file streamed to a connection in 64 KiB chunks, in order
 * with other writes, never read whole into memory. Reads stay a few chunks
 * ahead of the socket and wait for it to drain.
 */
import { Buffer } from "node:buffer";
import { close as fsClose, fstat as fsFstat, open as fsOpen, read as fsRead } from "node:fs";
import type { Stats } from "node:fs";
import type { FileHandle } from "node:fs/promises";
import { rangeError } from "./errors.js";

/** A queued writeFile. */
export interface FileJob {
  readonly file: string | number | FileHandle;
  readonly nbytes: number;
  readonly offset: number;
}

/** What the file pump needs from the stream. */
export interface FileSink {
  /** Hands a chunk to the socket; false when it is backed up. */
  writeChunk(chunk: Buffer): boolean;
  /** Bytes handed to the socket but not yet to the OS. */
  readonly backlog: number;
  /** Calls `fn` once the socket has drained. */
  onDrain(fn: () => void): void;
  /** True once the stream has closed: stop reading. */
  readonly gone: boolean;
  /** The job is over: `err` is a read failure, or null. */
  done(err: Error | null): void;
}

const CHUNK = 64 * 1024;
/** Keep at most this many bytes in the socket's buffer before waiting. */
const AHEAD = 4 * CHUNK;

/** Sends `job` to `sink`. A path is opened and closed here; a descriptor or FileHandle stays the caller's. */
export function sendFile(job: FileJob, sink: FileSink): void {
  const ownsFd = typeof job.file === "string";
  const handle = typeof job.file === "object" ? job.file : null;
  let fd = typeof job.file === "number" ? job.file : -1;
  // null: read on from where the file is (a pipe, FIFO or socket cannot seek: pread fails with ESPIPE).
  let position: number | null = job.offset;
  let remaining = job.nbytes === 0 ? Infinity : job.nbytes;

  const finish = (err: Error | null): void => {
    if (ownsFd && fd >= 0) fsClose(fd, () => {});
    sink.done(err);
  };

  const readNext = (): void => {
    if (sink.gone || remaining <= 0) return finish(null);
    const size = Math.min(CHUNK, remaining);
    const buf = Buffer.allocUnsafe(size);
    const onRead = (err: Error | null, bytesRead: number): void => {
      if (err !== null) return finish(err);
      if (sink.gone) return finish(null);
      if (bytesRead === 0) {
        if (remaining !== Infinity) {
          return finish(rangeError(`writeFile(): the file ended ${remaining} bytes before the ${job.nbytes} bytes asked for.`));
        }
        return finish(null);
      }
      if (position !== null) position += bytesRead;
      remaining -= bytesRead;
      const more = sink.writeChunk(bytesRead === size ? buf : buf.subarray(0, bytesRead));
      if (more || sink.backlog < AHEAD) readNext();
      else sink.onDrain(readNext);
    };
    if (handle !== null) {
      handle.read(buf, 0, size, position).then(
        (r) => onRead(null, r.bytesRead),
        (e: Error) => onRead(e, 0),
      );
    } else {
      fsRead(fd, buf, 0, size, position, (e, n) => onRead(e, n));
    }
  };

  /** Whether the file can seek; then the reads start at `offset`. */
  const start = (err: Error | null, stats?: Stats): void => {
    if (err !== null || stats === undefined) return finish(err);
    if (stats.isFIFO() || stats.isSocket() || stats.isCharacterDevice()) {
      if (job.offset !== 0) return finish(rangeError(`writeFile(): offset ${job.offset} on a file that cannot seek (a pipe, FIFO, socket or device); only 0 is possible.`));
      position = null;
    }
    readNext();
  };
  if (handle !== null) {
    handle.stat().then(
      (stats) => start(null, stats),
      (e: Error) => start(e),
    );
  } else if (ownsFd) {
    fsOpen(job.file as string, "r", (err, opened) => {
      if (err) return finish(err);
      fd = opened;
      fsFstat(fd, (e, stats) => start(e, stats));
    });
  } else {
    fsFstat(fd, (e, stats) => start(e, stats));
  }
}
