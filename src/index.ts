/**
 * pants-ts: an event-driven TCP networking framework for TypeScript on
 * Node.js, modelled on Pants. Public exports only.
 */
export { Engine } from "./engine.js";
export type { Timer, TimerFn, Stats, EngineOptions } from "./engine.js";
export { Channel, diagnostics } from "./channel.js";
export type { ChannelOptions } from "./channel.js";
export { Stream } from "./stream.js";
export type { StreamOptions, ConnectOptions, ConnectionClass, WritePackedOptions } from "./stream.js";
export { Server } from "./server.js";
export type { ServerOptions, ShutdownOptions } from "./server.js";
export { relay } from "./relay.js";
export type { RelayOptions, RelayResult } from "./relay.js";
export type { Transport } from "./transport.js";
export { Struct } from "./framing/struct.js";
export { NetStruct } from "./framing/netstruct.js";
export type { ReadDelimiter, Decoder } from "./framing/delimiter.js";
export type { Address } from "./address.js";
export type { SslOptions, SniEntry, CertReqs } from "./tls.js";
export { runCluster } from "./cluster.js";
export type { ClusterOptions, ClusterStats, ClusterHandle } from "./cluster.js";
export { setLogger } from "./log.js";
export type { Logger } from "./log.js";
export {
  ErrorCode,
  PantsError,
  ChannelStateError,
  InvalidAddressFormatError,
  BufferOverflowError,
  ConnectError,
  InvalidReadDelimiterError,
  TimeoutError,
  ProxyProtocolError,
  AbortError,
} from "./errors.js";
export type { ErrorCodeValue } from "./errors.js";
export { parseProxyHeader, parseProxySsl, encodeProxyV1, encodeProxyV2, PROXY_V1_MAX_LENGTH, PROXY_V2_SIGNATURE, ProxyTlvType } from "./proxy-protocol.js";
export type {
  ProxyHeader,
  ProxyParseResult,
  ProxyV1Fields,
  ProxyV2Fields,
  ProxyTlv,
  ProxySsl,
  ProxyFamily,
  ProxyTransport,
  ProxyIpEndpoint,
} from "./proxy-protocol.js";
export type { NetStructParseResult } from "./framing/netstruct.js";
