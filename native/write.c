/*
 * Writing: write / writev / pendingBytes / deliveredBytes / shutdown.
 *
 * Each write first tries uv_try_write, which writes what the socket takes
 * right now without queueing. Only what is left is queued with uv_write.
 * uv_try_write returns UV_EAGAIN while earlier uv_write requests still have
 * bytes queued (or a connect is pending), so bytes always leave in the order
 * they were given.
 *
 * A queued write request holds a napi_ref on every JS Buffer it points into,
 * so the memory stays alive until libuv is done with it; the refs are
 * deleted in the write callback, which libuv calls exactly once per request:
 * on completion, on error, or with UV_ECANCELED when the handle is closed
 * first (just before the close callback). The one exception is the bytes of
 * a lent read (read.c): their Buffer is detached, and its memory freed, as
 * soon as the call that delivers them returns, so a reference would not
 * keep them; what is queued of them is copied instead. So is what is queued
 * of a write(buffer, length): JS joins small writes into one buffer it
 * reuses, and a reference would pin all 64 KiB of it for a few queued bytes.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef __linux__
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#endif

#include "common.h"

/* Largest single buffer: uv_buf_t lengths are unsigned int. */
#define PN_MAX_WRITE_BUF ((size_t)INT32_MAX)

typedef struct pn_write {
  uv_write_t req;
  pn_conn *conn;
  size_t nrefs;
  uint8_t *copy;   /* the queued bytes of a lent read or a reused buffer, copied; else NULL */
  napi_ref refs[]; /* per buffer: a ref on the JS Buffer it points into, or NULL for a copy */
} pn_write;

static void drop_refs(napi_env env, pn_write *w) {
  for (size_t i = 0; i < w->nrefs; i++)
    if (w->refs[i] != NULL) napi_delete_reference(env, w->refs[i]);
  free(w->copy);
  free(w);
}

static void write_cb(uv_write_t *req, int status) {
  pn_write *w = req->data;
  pn_conn *c = w->conn;
  napi_env env = c->base.penv->env;

  drop_refs(env, w);
  c->write_reqs--;

  if (c->base.closing || status == UV_ECANCELED) return; /* close() cancelled it */
  if (status < 0) {
    /* Later queued writes fail the same way: report the first only. */
    if (!c->write_error_reported) {
      c->write_error_reported = true;
      pn_conn_emit_error(c, status, "write");
    }
    return;
  }
  if (c->write_reqs == 0 && !c->write_error_reported) pn_conn_emit(c, PN_CB_WRITTEN);
}

/* A write error found synchronously (the socket is already dead) is reported
 * through onError on the next loop iteration, like one found later. */
static void defer_write_error(pn_conn *c, int err) {
  /* No memory: bytes were dropped, so the stream the peer got has a hole. */
  if (err == UV_ENOMEM) c->bytes_lost = true;
  if (c->write_error_reported) return;
  c->write_error_reported = true;
  c->defer_write_err = err;
  pn_defer(c, PN_DEFER_WRITE_ERROR);
}

/* Whether a queued buf is copied rather than referenced (see the top). */
static bool copied(const pn_env *e, const uv_buf_t *b, bool reused) {
  return reused || pn_is_lent(e, (const uint8_t *)b->base, b->len);
}

/* Queues bufs (whose memory belongs to the JS values `owners`); the bytes
 * of a lent read, or of a buffer the caller reuses (`reused`), are copied,
 * and bufs[] is pointed at the copy. */
static int queue_write(napi_env env, pn_conn *c, uv_buf_t *bufs, size_t nbufs,
                       const napi_value *owners, bool reused) {
  const pn_env *e = c->base.penv;
  size_t lent = 0;
  for (size_t i = 0; i < nbufs; i++)
    if (copied(e, &bufs[i], reused)) lent += bufs[i].len;
  pn_write *w = malloc(sizeof(*w) + nbufs * sizeof(napi_ref));
  if (w == NULL) return UV_ENOMEM;
  w->conn = c;
  w->nrefs = 0;
  w->copy = NULL;
  w->req.data = w;
  if (lent > 0 && (w->copy = malloc(lent)) == NULL) {
    free(w);
    return UV_ENOMEM;
  }
  uint8_t *to = w->copy;
  for (size_t i = 0; i < nbufs; i++) {
    if (to != NULL && copied(e, &bufs[i], reused)) {
      memcpy(to, bufs[i].base, bufs[i].len);
      bufs[i].base = (char *)to;
      to += bufs[i].len;
      w->refs[w->nrefs++] = NULL;
    } else if (napi_create_reference(env, owners[i], 1, &w->refs[w->nrefs]) == napi_ok) {
      w->nrefs++;
    } else {
      drop_refs(env, w);
      return UV_ENOMEM;
    }
  }
  /* uv_write copies the uv_buf_t array itself, not the bytes. */
  int err = uv_write(&w->req, &c->h.stream, bufs, (unsigned int)nbufs, write_cb);
  if (err != 0) {
    drop_refs(env, w);
    return err;
  }
  c->write_reqs++;
  return 0;
}

/* Throws unless the connection can still be written to. */
static bool check_writable(napi_env env, pn_conn *c, const char *what) {
  char msg[96];
  if (c == NULL) {
    snprintf(msg, sizeof(msg), "%s on a closed connection", what);
    napi_throw_error(env, "ERR_STREAM_DESTROYED", msg);
    return false;
  }
  if (c->shut) {
    snprintf(msg, sizeof(msg), "%s after shutdown()", what);
    napi_throw_error(env, "ERR_STREAM_WRITE_AFTER_END", msg);
    return false;
  }
  return true;
}

static bool get_buffer(napi_env env, napi_value v, uv_buf_t *out) {
  bool is_buf = false;
  void *data;
  size_t len;
  if (napi_is_buffer(env, v, &is_buf) != napi_ok || !is_buf ||
      napi_get_buffer_info(env, v, &data, &len) != napi_ok)
    return false;
  if (len > PN_MAX_WRITE_BUF) return false;
  *out = uv_buf_init(data, (unsigned int)len);
  return true;
}

/* Tries to write bufs now and queues the rest. Returns the bytes not yet
 * written (and hence queued, unless the socket is dead). */
static size_t write_bufs(napi_env env, pn_conn *c, uv_buf_t *bufs, size_t nbufs,
                         const napi_value *owners, size_t total, bool reused) {
  /* An earlier write failed and its bytes are gone (no memory to queue
   * them, or the socket is dead): uv_try_write would send these after the
   * hole, where the peer takes them for what followed. They are dropped
   * too; the error already reported, or deferred, ends the connection. */
  if (c->write_error_reported) return total;
  int n = uv_try_write(&c->h.stream, bufs, (unsigned int)nbufs);
  /* n < 0: UV_EAGAIN (the socket is full, or earlier writes are queued), or
   * an error. The error is the one to report: the socket took it (a reset
   * peer's ECONNRESET is given once), so a uv_write now would only get EPIPE,
   * and the next read a plain EOF (the reset would pass for a FIN). */
  if (n < 0 && n != UV_EAGAIN) {
    defer_write_error(c, n);
    return total;
  }
  size_t written = n > 0 ? (size_t)n : 0;
  if (written == total) return 0;

  /* Skip what went out, possibly ending inside a buffer. */
  size_t i = 0, skip = written;
  while (i < nbufs && skip >= bufs[i].len) skip -= bufs[i++].len;
  bufs[i].base += skip;
  bufs[i].len -= (unsigned int)skip;

  int err = queue_write(env, c, bufs + i, nbufs - i, owners + i, reused);
  if (err != 0) defer_write_error(c, err);
  return total - written;
}

/* write(buffer[, length]) -> bytes not written yet (0: all went out now).
 * With `length`, only the first `length` bytes of the buffer are written,
 * and what is queued of them is copied: JS joins small writes into one
 * buffer, which it may overwrite as soon as the call returns. */
napi_value pn_conn_write(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2], result;
  bool ok;
  uv_buf_t buf;

  pn_conn *c = pn_conn_arg(env, info, &argc, argv, &ok);
  if (!ok) return NULL;
  if (!get_buffer(env, argv[0], &buf)) {
    pn_throw_type(env, "write() expects a Buffer (of at most 2 GiB)");
    return NULL;
  }
  napi_valuetype t; /* a missing length reads as undefined */
  if (napi_typeof(env, argv[1], &t) != napi_ok) return NULL;
  if (t != napi_undefined) {
    double n;
    if (t != napi_number || napi_get_value_double(env, argv[1], &n) != napi_ok || !(n >= 0) ||
        n > (double)buf.len || n != (double)(unsigned int)n) {
      napi_throw_range_error(env, "ERR_OUT_OF_RANGE",
                             "write(): length must be an integer from 0 to the buffer's length");
      return NULL;
    }
    buf.len = (unsigned int)n;
  }
  if (!check_writable(env, c, "write()")) return NULL;
  size_t left = buf.len == 0 ? 0 : write_bufs(env, c, &buf, 1, argv, buf.len, t != napi_undefined);
  result = pn_size_value(env, left);
  return result;
}

/* writev(buffers) -> bytes not written yet */
napi_value pn_conn_writev(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], result = NULL;
  bool ok, is_array = false;
  uint32_t n = 0;
  uv_buf_t stack_bufs[16];
  napi_value stack_vals[16];
  uv_buf_t *bufs = stack_bufs;
  napi_value *vals = stack_vals;
  size_t total = 0, left = 0;
  char msg[96];

  pn_conn *c = pn_conn_arg(env, info, &argc, argv, &ok);
  if (!ok) return NULL;
  if (napi_is_array(env, argv[0], &is_array) != napi_ok || !is_array ||
      napi_get_array_length(env, argv[0], &n) != napi_ok) {
    pn_throw_type(env, "writev() expects an array of Buffers");
    return NULL;
  }
  /* No memory for the arrays: the buffers are still checked (one at a time,
   * in the first slot), and the write fails as one that cannot be queued
   * does, through onError on the next turn, not by throwing into the JS
   * code that flushed. */
  bool nomem = false;
  if (n > 16) {
    bufs = malloc(n * sizeof(*bufs));
    vals = malloc(n * sizeof(*vals));
    if (bufs == NULL || vals == NULL) {
      free(bufs);
      free(vals);
      bufs = stack_bufs;
      vals = stack_vals;
      nomem = true;
    }
  }
  for (uint32_t i = 0; i < n; i++) {
    uint32_t k = nomem ? 0 : i;
    if (napi_get_element(env, argv[0], i, &vals[k]) != napi_ok ||
        !get_buffer(env, vals[k], &bufs[k])) {
      snprintf(msg, sizeof(msg), "writev() expects an array of Buffers (element %u is not one)", i);
      pn_throw_type(env, msg);
      goto out;
    }
    total += bufs[k].len;
  }
  if (!check_writable(env, c, "writev()")) goto out;
  if (nomem && total > 0) {
    defer_write_error(c, UV_ENOMEM);
    left = total;
  } else {
    left = total == 0 ? 0 : write_bufs(env, c, bufs, n, vals, total, false);
  }
  result = pn_size_value(env, left);
out:
  if (bufs != stack_bufs) free(bufs);
  if (vals != stack_vals) free(vals);
  bool pending = false;
  napi_is_exception_pending(env, &pending);
  return pending ? NULL : result;
}

/* pendingBytes(): bytes handed to uv_write not yet written to the socket. */
napi_value pn_conn_pending_bytes(napi_env env, napi_callback_info info) {
  bool ok;
  napi_value result;
  pn_conn *c = pn_conn_arg(env, info, NULL, NULL, &ok);
  if (!ok) return NULL;
  size_t n = c == NULL ? 0 : uv_stream_get_write_queue_size(&c->h.stream);
  result = pn_size_value(env, n);
  return result;
}

#ifdef __linux__
/*
 * The kernel's struct tcp_info is glibc's plus fields appended over the
 * years (an ABI that only grows); glibc's header stops before the two read
 * here, so they are spelled out at their fixed offsets.
 */
struct pn_tcp_info {
  struct tcp_info base;
  uint64_t pacing_rate, max_pacing_rate, bytes_acked, bytes_received;
  uint32_t segs_out, segs_in, notsent_bytes;
};
_Static_assert(offsetof(struct pn_tcp_info, bytes_acked) == 120, "tcpi_bytes_acked offset");
_Static_assert(offsetof(struct pn_tcp_info, notsent_bytes) == 144, "tcpi_notsent_bytes offset");
#endif

/*
 * The bytes of the TCP connection on `fd` the peer has acknowledged so far
 * (it only grows), or -1 when nothing written is still in the kernel, or
 * when that cannot be known (not TCP, not Linux, a kernel older than 4.6).
 */
static double tcp_delivered(int fd) {
  double delivered = -1;
#ifdef __linux__
  struct pn_tcp_info ti;
  socklen_t len = sizeof ti;
  if (fd >= 0 && getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) == 0 &&
      len >= offsetof(struct pn_tcp_info, notsent_bytes) + sizeof ti.notsent_bytes &&
      (ti.base.tcpi_unacked > 0 || ti.notsent_bytes > 0)) {
    delivered = (double)ti.bytes_acked;
  }
#else
  (void)fd;
#endif
  return delivered;
}

/*
 * deliveredBytes(): tcp_delivered() of this connection (-1 for a pipe). A
 * peer slowly reading what the kernel holds shows here, and in no write
 * completion; a peer that vanished shows as no progress however much the
 * kernel still takes: the idle timer asks while something is out.
 */
napi_value pn_conn_delivered_bytes(napi_env env, napi_callback_info info) {
  bool ok;
  napi_value result;
  double delivered = -1;
  pn_conn *c = pn_conn_arg(env, info, NULL, NULL, &ok);
  if (!ok) return NULL;
  uv_os_fd_t fd;
  if (c != NULL && c->h.handle.type == UV_TCP && uv_fileno(&c->h.handle, &fd) == 0)
    delivered = tcp_delivered(fd);
  napi_create_double(env, delivered, &result);
  return result;
}

/*
 * deliveredBytesOf(fd): tcp_delivered() of a descriptor the addon does not
 * own (node:net's, for the same idle check on the JS transport).
 */
napi_value pn_delivered_bytes_of(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], result;
  int64_t fd;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) {
    pn_throw_napi(env, "napi_get_cb_info");
    return NULL;
  }
  /* A missing argument reads as undefined: pn_get_int throws for it. */
  if (!pn_get_int(env, argv[0], "deliveredBytesOf(): fd", 0, INT32_MAX, &fd)) return NULL;
  napi_create_double(env, tcp_delivered((int)fd), &result);
  return result;
}

static void shutdown_cb(uv_shutdown_t *req, int status) {
  pn_conn *c = req->data;
  free(req);
  if (c->base.closing || status == UV_ECANCELED) return;
  /* ENOTCONN: the peer reset the connection before our FIN. The reset is the
   * read's to report (ECONNRESET: shutdown(2) leaves the error pending), as
   * on node:net, which ignores this too; reported here, it would be a write
   * error ENOTCONN instead. */
  if (status < 0 && status != UV_ENOTCONN) pn_conn_emit_error(c, status, "shutdown");
  else pn_conn_emit(c, PN_CB_SHUTDOWN);
}

/* shutdown(): FIN once the queued writes are out. Idempotent. */
napi_value pn_conn_shutdown(napi_env env, napi_callback_info info) {
  bool ok;
  pn_conn *c = pn_conn_arg(env, info, NULL, NULL, &ok);
  if (!ok) return NULL;
  if (c == NULL) {
    napi_throw_error(env, "ERR_STREAM_DESTROYED", "shutdown() on a closed connection");
    return NULL;
  }
  if (c->shut) return NULL;
  c->shut = true;
  /* A write's bytes were lost: no FIN, which would tell the peer it has the
   * whole stream. The write error, reported or on its way, closes the
   * connection, with a reset (pn_conn_close). */
  if (c->bytes_lost) return NULL;
  /* libuv waits for the write queue to drain, then calls shutdown(2). */
  uv_shutdown_t *req = malloc(sizeof(*req));
  if (req != NULL) req->data = c;
  int err = req == NULL ? UV_ENOMEM : uv_shutdown(req, &c->h.stream, shutdown_cb);
  if (err != 0) {
    free(req); /* not taken: no callback will free it */
    /* The error closes the connection, dropping what the queue still holds:
     * then the peer must get a reset, not a FIN (pn_conn_close). */
    c->fin_failed = true;
    c->defer_shutdown_err = err;
    pn_defer(c, PN_DEFER_SHUTDOWN_ERROR);
  }
  return NULL;
}
