/*
 * Connections: their ids, creation (accept or connect), close and the close
 * callback, deferred work, socket options and addresses. Reading lives in
 * read.c, writing in write.c.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "common.h"

/* ---- ids ------------------------------------------------------------------ */

/* The most connections one environment can hold at once (2^22, about four
 * million; the generation takes the other bits of a 31-bit id). */
#define PN_MAX_SLOTS (PN_SLOT_MASK + 1u)

/* A freed slot is taken again only while at least this many slots are free
 * (below that a new slot is taken), and free slots are taken first-in
 * first-out: see common.h for what that guarantees. It costs at most this
 * many slots beyond the most connections ever open at once. */
#define PN_SLOT_REUSE_MIN 256u

/* Takes the free slot freed longest ago. */
static uint32_t slot_dequeue(pn_env *e) {
  uint32_t slot = e->free_head;
  e->free_head = e->free_next[slot];
  e->free_count--;
  return slot;
}

/* Grows the slot table (to slots_cap * 2, at most PN_MAX_SLOTS). */
static int slot_grow(pn_env *e) {
  if (e->slots_cap == PN_MAX_SLOTS) return UV_EMFILE;
  uint32_t cap = e->slots_cap == 0 ? PN_SLOT_REUSE_MIN : e->slots_cap * 2;
  if (cap > PN_MAX_SLOTS) cap = PN_MAX_SLOTS;
  /* Grown one array at a time: each realloc that succeeds is kept, so a
   * failure part-way leaves every array at least slots_cap long. */
  pn_conn **slots = realloc(e->slots, cap * sizeof(*slots));
  if (slots == NULL) return UV_ENOMEM;
  e->slots = slots;
  uint16_t *gens = realloc(e->gens, cap * sizeof(*gens));
  if (gens == NULL) return UV_ENOMEM;
  e->gens = gens;
  uint32_t *free_next = realloc(e->free_next, cap * sizeof(*free_next));
  if (free_next == NULL) return UV_ENOMEM;
  e->free_next = free_next;
  e->slots_cap = cap;
  return 0;
}

/* Gives `c` a free slot and the id that names it. */
static int slot_take(pn_env *e, pn_conn *c) {
  uint32_t slot;
  if (e->free_count >= PN_SLOT_REUSE_MIN) {
    slot = slot_dequeue(e);
  } else {
    int r = e->slots_used < e->slots_cap ? 0 : slot_grow(e);
    if (r == 0) {
      slot = e->slots_used++;
      e->gens[slot] = 0;
    } else if (e->free_count > 0) {
      /* The table is full or cannot grow: a freed slot is better than no
       * connection, but its ids wrap sooner (common.h). */
      slot = slot_dequeue(e);
    } else {
      return r;
    }
  }
  e->slots[slot] = c;
  c->id = (int32_t)(slot | ((uint32_t)e->gens[slot] << PN_SLOT_BITS));
  return 0;
}

/* Empties the slot of `c` and queues it (last) for reuse; the next id it
 * gets has another generation. */
static void slot_free(pn_env *e, pn_conn *c) {
  uint32_t slot = (uint32_t)c->id & PN_SLOT_MASK;
  e->slots[slot] = NULL;
  e->gens[slot] = (uint16_t)((e->gens[slot] + 1) & PN_GEN_MASK);
  if (e->free_count == 0) e->free_head = slot;
  else e->free_next[e->free_tail] = slot;
  e->free_tail = slot;
  e->free_count++;
  c->id = -1;
}

napi_value pn_conn_id(pn_conn *c) {
  napi_value v;
  return napi_create_int32(c->base.penv->env, c->id, &v) == napi_ok ? v : NULL;
}

/* ---- lifetime ------------------------------------------------------------- */

pn_conn *pn_conn_new(pn_env *e, bool is_pipe, int *err) {
  pn_conn *c = calloc(1, sizeof(*c));
  if (c == NULL) {
    *err = UV_ENOMEM;
    return NULL;
  }
  c->base.penv = e;
  c->base.kind = PN_KIND_CONN;
  c->base.is_pipe = is_pipe;
  c->bt_idx = -1;
  pn_framing_init(&c->fr);
  int r = slot_take(e, c);
  if (r == 0) {
    r = is_pipe ? uv_pipe_init(e->loop, &c->h.pipe, 0) : uv_tcp_init(e->loop, &c->h.tcp);
    if (r != 0) slot_free(e, c); /* nothing was put on the loop */
  }
  if (r != 0) {
    free(c);
    *err = r;
    return NULL;
  }
  c->h.handle.data = c;
  pn_handle_opened(&c->base);
  return c;
}

/* The only place a pn_conn is freed. By the time libuv calls this it has
 * already called back every pending write, shutdown and connect request
 * (with UV_ECANCELED), so no request still points at `c`. */
static void conn_close_cb(uv_handle_t *h) {
  pn_conn *c = h->data;
  pn_env *e = c->base.penv;
  napi_handle_scope scope;
  napi_value id;

  pn_list_remove(&c->base.link);
  pn_list_remove(&c->defer_link);
  c->defer_bits = 0;
  if (!e->tearing_down && napi_open_handle_scope(e->env, &scope) == napi_ok) {
    /* JS may still call functions with the id from onClose: `closing` turns
     * them into no-ops (or clear errors for write/shutdown). */
    if ((id = pn_conn_id(c)) != NULL) pn_call(e, PN_CB_CLOSE, 1, &id);
    napi_close_handle_scope(e->env, scope);
  }
  slot_free(e, c); /* from now on the id names nothing */
  pn_framing_free(&c->fr);
  free(c);
  pn_handle_closed(e, NULL);
}

void pn_conn_keep_peer(pn_conn *c) {
  int len = sizeof(c->peer);
  if (uv_tcp_getpeername(&c->h.tcp, &c->peer.sa, &len) != 0) c->peer.sa.sa_family = 0;
}

/* Idempotent. After this only onClose is delivered for the connection. */
void pn_conn_close(pn_conn *c) {
  if (c->base.closing) return;
  pn_batch_touch(c);
  c->base.closing = true;
  c->reading = false;
  c->uv_reading = false;
  c->need_deliver = false;
  pn_list_remove(&c->ready_link); /* a batched read it had is dropped */
  /* uv_close stops reading at once and cancels queued writes, a pending
   * shutdown and a pending connect; their callbacks run (UV_ECANCELED) just
   * before the close callback, in the loop's closing phase. After lost
   * bytes a TCP peer gets a reset, not a FIN that would pass the truncated
   * stream off as whole (uv_tcp_close_reset closes too; where it cannot,
   * as while a shutdown is pending, the close is a plain one). So does one
   * whose FIN could not be queued, when this close drops queued bytes. */
  const bool reset =
      c->bytes_lost || (c->fin_failed && uv_stream_get_write_queue_size(&c->h.stream) > 0);
  if (reset && !c->base.is_pipe && uv_tcp_close_reset(&c->h.tcp, conn_close_cb) == 0) return;
  uv_close(&c->h.handle, conn_close_cb);
}

void pn_conn_run_deferred(pn_conn *c, unsigned bits) {
  pn_env *e = c->base.penv;
  napi_handle_scope scope;
  napi_value argv[2];

  if (c->base.closing) return;
  if (napi_open_handle_scope(e->env, &scope) != napi_ok) return;
  if ((argv[0] = pn_conn_id(c)) == NULL) goto out;
  if (bits & PN_DEFER_CONNECT_ERROR) {
    argv[1] = pn_err_name(e->env, c->defer_connect_err);
    pn_call(e, PN_CB_CONNECT, 2, argv);
    if (c->base.closing) goto out;
  }
  if (bits & PN_DEFER_WRITE_ERROR) {
    pn_conn_emit_error(c, c->defer_write_err, "write");
    if (c->base.closing) goto out;
  }
  if (bits & PN_DEFER_READ_NOMEM) {
    pn_conn_emit_error(c, UV_ENOMEM, "read");
    if (c->base.closing) goto out;
  }
  if (bits & PN_DEFER_SHUTDOWN_ERROR) {
    pn_conn_emit_error(c, c->defer_shutdown_err, "shutdown");
    if (c->base.closing) goto out;
  }
  if ((bits & PN_DEFER_DELIVER) && c->reading && c->need_deliver) pn_deliver(c, NULL, 0);
  /* The EOF held back for P's frames, once they are out (not while JS has
   * paused again: readStart brings it back). */
  if ((bits & PN_DEFER_END) && c->end_pending && !c->base.closing && c->reading &&
      !c->need_deliver) {
    c->end_pending = false;
    c->reading = false;
    pn_call(e, PN_CB_END, 1, argv);
  }
out:
  napi_close_handle_scope(e->env, scope);
}

/* Whether an event may still be reported for `c`: reads batched in this poll
 * phase reach JS before it (as pn_call would deliver them), and a handler
 * of theirs may close `c`, after which only onClose is delivered. */
static bool still_open(pn_conn *c) {
  if (c->base.closing) return false;
  pn_flush_reads(c->base.penv);
  return !c->base.closing;
}

void pn_conn_emit(pn_conn *c, int which) {
  pn_env *e = c->base.penv;
  napi_handle_scope scope;
  napi_value id;
  if (!still_open(c)) return;
  if (napi_open_handle_scope(e->env, &scope) != napi_ok) return;
  if ((id = pn_conn_id(c)) != NULL) pn_call(e, which, 1, &id);
  napi_close_handle_scope(e->env, scope);
}

void pn_conn_emit_error(pn_conn *c, int err, const char *syscall) {
  pn_env *e = c->base.penv;
  napi_handle_scope scope;
  napi_value argv[3];
  if (!still_open(c)) return;
  if (napi_open_handle_scope(e->env, &scope) != napi_ok) return;
  if ((argv[0] = pn_conn_id(c)) != NULL &&
      napi_create_string_utf8(e->env, syscall, NAPI_AUTO_LENGTH, &argv[2]) == napi_ok) {
    argv[1] = pn_err_name(e->env, err);
    pn_call(e, PN_CB_ERROR, 3, argv);
  }
  napi_close_handle_scope(e->env, scope);
}

/* ---- connecting ---------------------------------------------------------- */

static void connect_cb(uv_connect_t *req, int status) {
  pn_conn *c = req->data;
  pn_env *e = c->base.penv;
  free(req);
  napi_handle_scope scope;
  napi_value argv[2];

  c->connecting = false;
  /* Closed while connecting (status is UV_ECANCELED): JS asked for it. */
  if (c->base.closing) return;
  if (status == 0 && !c->base.is_pipe) pn_conn_keep_peer(c); /* as for accepted connections */
  if (!still_open(c)) return;
  if (napi_open_handle_scope(e->env, &scope) != napi_ok) return;
  if ((argv[0] = pn_conn_id(c)) != NULL) {
    argv[1] = pn_err_name(e->env, status);
    pn_call(e, PN_CB_CONNECT, 2, argv);
  }
  napi_close_handle_scope(e->env, scope);
}

/* Creates a connection and returns its id, or throws. */
static napi_value new_client(napi_env env, pn_env *e, bool is_pipe, pn_conn **out) {
  int err = 0;
  if (!e->have_callbacks) {
    napi_throw_error(env, "ERR_NATIVE_NOT_INITIALIZED", "pants_native: call init(callbacks) first");
    return NULL;
  }
  pn_conn *c = pn_conn_new(e, is_pipe, &err);
  if (c == NULL) {
    pn_throw_uv(env, err, "socket", NULL);
    return NULL;
  }
  napi_value obj = pn_conn_id(c);
  if (obj == NULL) {
    pn_conn_close(c);
    pn_throw_napi(env, "napi_create_int32");
    return NULL;
  }
  *out = c;
  return obj;
}

static uv_connect_t *new_connect_req(pn_conn *c) {
  uv_connect_t *req = malloc(sizeof(*req));
  if (req != NULL) req->data = c;
  return req;
}

/* A connect that fails synchronously is still reported asynchronously. */
static void connect_started(pn_conn *c, int err) {
  if (err == 0) {
    c->connecting = true;
    return;
  }
  c->defer_connect_err = err;
  pn_defer(c, PN_DEFER_CONNECT_ERROR);
}

/* connectTcp(host, port[, localHost, localPort]): with a local address, the
 * socket is bound to it first (its source address and port). */
napi_value pn_connect_tcp(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  pn_env *e;
  int64_t port, local_port = 0;
  struct sockaddr_storage ss, local;
  napi_valuetype t = napi_undefined;
  pn_conn *c = NULL;

  PN_CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, (void **)&e), "napi_get_cb_info");
  char *host = pn_get_string(env, argv[0], "connectTcp(): host", NULL);
  if (host == NULL) return NULL;
  if (!pn_get_int(env, argv[1], "connectTcp(): port", 0, 65535, &port)) {
    free(host);
    return NULL;
  }
  int err = pn_parse_ip(host, (int)port, &ss);
  free(host);
  if (err != 0) {
    pn_throw_type(env, "connectTcp(): host must be an IPv4 or IPv6 address literal");
    return NULL;
  }
  bool bind_first = argc >= 4 && napi_typeof(env, argv[2], &t) == napi_ok && t != napi_undefined;
  if (bind_first) {
    char *local_host = pn_get_string(env, argv[2], "connectTcp(): localHost", NULL);
    if (local_host == NULL) return NULL;
    if (!pn_get_int(env, argv[3], "connectTcp(): localPort", 0, 65535, &local_port)) {
      free(local_host);
      return NULL;
    }
    err = pn_parse_ip(local_host, (int)local_port, &local);
    free(local_host);
    if (err != 0) {
      pn_throw_type(env, "connectTcp(): localHost must be an IPv4 or IPv6 address literal");
      return NULL;
    }
  }
  napi_value obj = new_client(env, e, false, &c);
  if (obj == NULL) return NULL;
  /* A bind that fails (EADDRNOTAVAIL, EADDRINUSE) is the connect failing. */
  if (bind_first) err = uv_tcp_bind(&c->h.tcp, (const struct sockaddr *)&local, 0);
  uv_connect_t *req = NULL;
  if (err == 0) {
    req = new_connect_req(c);
    err = req == NULL ? UV_ENOMEM
                      : uv_tcp_connect(req, &c->h.tcp, (const struct sockaddr *)&ss, connect_cb);
    if (err != 0) free(req); /* not taken: no callback will free it */
  }
  /* The socket exists now; like accepted connections, no Nagle delay. */
  if (err == 0) uv_tcp_nodelay(&c->h.tcp, 1);
  connect_started(c, err);
  return obj;
}

/* connectPipe(path) */
napi_value pn_connect_pipe(napi_env env, napi_callback_info info) {
  size_t argc = 1, len = 0;
  napi_value argv[1];
  pn_env *e;
  pn_conn *c = NULL;

  PN_CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, (void **)&e), "napi_get_cb_info");
  char *path = pn_get_string(env, argv[0], "connectPipe(): path", &len);
  if (path == NULL) return NULL;
  napi_value obj = new_client(env, e, true, &c);
  if (obj == NULL) {
    free(path);
    return NULL;
  }
  uv_connect_t *req = new_connect_req(c);
  int err = 0;
  if (req == NULL) {
    err = UV_ENOMEM;
  } else {
#if PN_HEADERS_HAVE_PIPE2
    if (pn_uv_has_pipe2()) {
      /* libuv reports connect errors through connect_cb (it feeds the
       * watcher); only bad arguments come back here. */
      err = uv_pipe_connect2(req, &c->h.pipe, path, len, UV_PIPE_NO_TRUNCATE, connect_cb);
    } else
#endif
    if (len == 0 || path[0] == '\0') err = UV_EINVAL; /* no abstract names before 1.46 */
    else uv_pipe_connect(req, &c->h.pipe, path, connect_cb);
    if (err != 0) free(req); /* not taken: no callback will free it */
  }
  free(path); /* libuv copied what it needs */
  connect_started(c, err);
  return obj;
}

/* ---- methods ---------------------------------------------------------------- */

/* The connection named by the first argument, with the other arguments in
 * argv (missing ones are undefined). */
pn_conn *pn_conn_arg(napi_env env, napi_callback_info info, size_t *argc,
                     napi_value *argv, bool *ok) {
  napi_value args[4];
  size_t want = (argc != NULL ? *argc : 0) + 1, n = want;
  int32_t id;
  pn_env *e;
  *ok = true;
  if (want > sizeof(args) / sizeof(args[0]) ||
      napi_get_cb_info(env, info, &n, args, NULL, (void **)&e) != napi_ok) {
    *ok = false;
    pn_throw_napi(env, "napi_get_cb_info");
    return NULL;
  }
  if (napi_get_value_int32(env, args[0], &id) != napi_ok) {
    *ok = false;
    pn_throw_type(env, "the first argument must be a connection id");
    return NULL;
  }
  for (size_t i = 1; i < want; i++) argv[i - 1] = args[i];
  if (id < 0) return NULL;
  uint32_t slot = (uint32_t)id & PN_SLOT_MASK;
  if (slot >= e->slots_used) return NULL;
  pn_conn *c = e->slots[slot];
  return c != NULL && c->id == id && !c->base.closing ? c : NULL;
}

static napi_value conn_close(napi_env env, napi_callback_info info) {
  bool ok;
  pn_conn *c = pn_conn_arg(env, info, NULL, NULL, &ok);
  if (c != NULL) pn_conn_close(c);
  return NULL;
}

static napi_value conn_address_impl(napi_env env, napi_callback_info info, bool peer) {
  bool ok;
  napi_value result;
  pn_conn *c = pn_conn_arg(env, info, NULL, NULL, &ok);
  if (!ok) return NULL;
  if (c == NULL) goto none;
  if (c->base.is_pipe) {
    char buf[256];
    size_t len = sizeof(buf);
    int err = peer ? uv_pipe_getpeername(&c->h.pipe, buf, &len)
                   : uv_pipe_getsockname(&c->h.pipe, buf, &len);
    if (err != 0) goto none;
    return pn_path_object(env, buf, len);
  }
  struct sockaddr_storage ss;
  int len = sizeof(ss);
  memset(&ss, 0, sizeof(ss));
  if (peer && c->peer.sa.sa_family != 0) { /* kept from accept or connect */
    memcpy(&ss, &c->peer, sizeof(c->peer));
    return pn_sockaddr_object(env, &ss);
  }
  int err = peer ? uv_tcp_getpeername(&c->h.tcp, (struct sockaddr *)&ss, &len)
                 : uv_tcp_getsockname(&c->h.tcp, (struct sockaddr *)&ss, &len);
  if (err != 0) goto none;
  return pn_sockaddr_object(env, &ss);
none:
  napi_get_null(env, &result);
  return result;
}

static napi_value conn_address(napi_env env, napi_callback_info info) {
  return conn_address_impl(env, info, false);
}

static napi_value conn_peer_address(napi_env env, napi_callback_info info) {
  return conn_address_impl(env, info, true);
}

static napi_value conn_fd(napi_env env, napi_callback_info info) {
  bool ok;
  napi_value result;
  uv_os_fd_t fd = -1;
  pn_conn *c = pn_conn_arg(env, info, NULL, NULL, &ok);
  if (!ok) return NULL;
  if (c == NULL || uv_fileno(&c->h.handle, &fd) != 0) fd = -1;
  napi_create_int32(env, fd, &result);
  return result;
}

/* setNoDelay(enable): TCP only; a no-op on pipes and closed connections. */
static napi_value conn_set_no_delay(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  bool ok, on = true;
  napi_valuetype t;
  pn_conn *c = pn_conn_arg(env, info, &argc, argv, &ok);
  if (!ok) return NULL;
  if (napi_typeof(env, argv[0], &t) == napi_ok && t != napi_undefined &&
      !pn_get_bool(env, argv[0], "setNoDelay(): enable", &on))
    return NULL;
  if (c != NULL && !c->base.is_pipe) uv_tcp_nodelay(&c->h.tcp, on);
  return NULL;
}

/* setKeepAlive(enable, delaySeconds): delay 0 keeps the system's idle time. */
static napi_value conn_set_keep_alive(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  bool ok, on = false;
  int64_t delay = 0;
  napi_valuetype t;
  pn_conn *c = pn_conn_arg(env, info, &argc, argv, &ok);
  if (!ok) return NULL;
  if (napi_typeof(env, argv[0], &t) == napi_ok && t != napi_undefined &&
      !pn_get_bool(env, argv[0], "setKeepAlive(): enable", &on))
    return NULL;
  if (napi_typeof(env, argv[1], &t) == napi_ok && t != napi_undefined &&
      !pn_get_int(env, argv[1], "setKeepAlive(): delaySeconds", 0, INT32_MAX, &delay))
    return NULL;
  if (c == NULL || c->base.is_pipe) return NULL;
  if (on && delay == 0) {
    /* uv_tcp_keepalive always sets TCP_KEEPIDLE, which must be >= 1. */
    uv_os_fd_t fd;
    int one = 1;
    if (uv_fileno(&c->h.handle, &fd) == 0)
      setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
  } else {
    uv_tcp_keepalive(&c->h.tcp, on, (unsigned int)delay);
  }
  return NULL;
}

static napi_value conn_ref(napi_env env, napi_callback_info info) {
  bool ok;
  pn_conn *c = pn_conn_arg(env, info, NULL, NULL, &ok);
  if (c != NULL) uv_ref(&c->h.handle);
  return NULL;
}

static napi_value conn_unref(napi_env env, napi_callback_info info) {
  bool ok;
  pn_conn *c = pn_conn_arg(env, info, NULL, NULL, &ok);
  if (c != NULL) uv_unref(&c->h.handle);
  return NULL;
}

bool pn_conn_export(pn_env *e, napi_value exports) {
  napi_value obj;
  napi_property_descriptor props[] = {
      {"readStart", NULL, pn_conn_read_start, NULL, NULL, NULL, napi_enumerable, e},
      {"readStop", NULL, pn_conn_read_stop, NULL, NULL, NULL, napi_enumerable, e},
      {"lendReads", NULL, pn_conn_lend_reads, NULL, NULL, NULL, napi_enumerable, e},
      {"setFraming", NULL, pn_conn_set_framing, NULL, NULL, NULL, napi_enumerable, e},
      {"resetFraming", NULL, pn_conn_reset_framing, NULL, NULL, NULL, napi_enumerable, e},
      {"takePending", NULL, pn_conn_take_pending, NULL, NULL, NULL, napi_enumerable, e},
      {"write", NULL, pn_conn_write, NULL, NULL, NULL, napi_enumerable, e},
      {"writev", NULL, pn_conn_writev, NULL, NULL, NULL, napi_enumerable, e},
      {"pendingBytes", NULL, pn_conn_pending_bytes, NULL, NULL, NULL, napi_enumerable, e},
      {"deliveredBytes", NULL, pn_conn_delivered_bytes, NULL, NULL, NULL, napi_enumerable, e},
      {"bytesRead", NULL, pn_conn_bytes_read, NULL, NULL, NULL, napi_enumerable, e},
      {"shutdown", NULL, pn_conn_shutdown, NULL, NULL, NULL, napi_enumerable, e},
      {"close", NULL, conn_close, NULL, NULL, NULL, napi_enumerable, e},
      {"address", NULL, conn_address, NULL, NULL, NULL, napi_enumerable, e},
      {"peerAddress", NULL, conn_peer_address, NULL, NULL, NULL, napi_enumerable, e},
      {"setNoDelay", NULL, conn_set_no_delay, NULL, NULL, NULL, napi_enumerable, e},
      {"setKeepAlive", NULL, conn_set_keep_alive, NULL, NULL, NULL, napi_enumerable, e},
      {"ref", NULL, conn_ref, NULL, NULL, NULL, napi_enumerable, e},
      {"unref", NULL, conn_unref, NULL, NULL, NULL, napi_enumerable, e},
      {"fd", NULL, conn_fd, NULL, NULL, NULL, napi_enumerable, e},
  };
  return napi_create_object(e->env, &obj) == napi_ok &&
         napi_define_properties(e->env, obj, sizeof(props) / sizeof(props[0]), props) == napi_ok &&
         napi_set_named_property(e->env, exports, "conn", obj) == napi_ok;
}
