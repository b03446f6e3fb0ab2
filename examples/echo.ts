/**
 * echo: the smallest useful server. Every line a client sends comes back
 * to it, unchanged.
 *
 *   npx tsx examples/echo.ts            # listens on 127.0.0.1:$PORT (default 4041; 0 picks a free port)
 *   nc localhost 4041                   # type a line, get it back; Ctrl-D or Ctrl-C to leave
 *   echo hello | nc -q1 localhost 4041  # works for one-shot clients too
 *
 * Also `pants-ts serve examples/echo.ts --listen 4041` (the default export is
 * the connection class).
 */
import { pathToFileURL } from "node:url";
import { Server, Stream } from "pants-ts";

export default class Echo extends Stream {
  override onConnect(): void {
    this.readDelimiter = "\n"; // one frame per line; "\r\n" clients get their "\r" back too
  }

  override onRead(line: Buffer): void {
    this.write(line); // writes made in one turn leave in one system call
    this.write("\n");
  }
}

// Run directly (not loaded by `pants-ts serve`): listen on PORT, stop on SIGTERM/SIGINT.
if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  const server = new Server(Echo).listen(["127.0.0.1", Number(process.env.PORT ?? 4041)]);
  await server.ready();
  const stop = async (): Promise<void> => {
    await server.shutdown();
    process.exit(0);
  };
  process.once("SIGTERM", stop).once("SIGINT", stop); // before the line below: a signal right after it is handled
  const [host, port] = server.localAddress as [string, number];
  console.log(`echo listening on ${host}:${port}`);
}
