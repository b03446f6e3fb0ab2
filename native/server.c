/*
 * Listening sockets: listenTcp / listenPipe / listenFd, accepting connections, and the
 * server object's methods (address, close, fd, ref, unref).
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "common.h"

typedef struct {
  pn_server s;
  bool unlink_on_close; /* we bound the path ourselves: remove it at close */
  /* Sheds a connection that cannot have a pn_conn (see shed()). */
  pn_uv_stream shed;
  bool shedding;  /* uv_close was called on `shed`, its callback has not run */
  bool owed;      /* libuv holds an accepted connection we could not take yet */
  bool closed;    /* the server handle's close callback has run */
} pn_server_full;

/* ---- closing -------------------------------------------------------------- */

/* The only place a pn_server is freed: once both its handle and the shed
 * handle in it are closed. */
static void server_free(pn_server *s) {
  pn_env *e = s->base.penv;
  free(s->path);
  free(s);
  pn_handle_closed(e, NULL);
}

static void server_close_cb(uv_handle_t *h) {
  pn_server *s = h->data;
  pn_server_full *f = (pn_server_full *)s;
  if (f->unlink_on_close && s->path != NULL) unlink(s->path);
  pn_list_remove(&s->base.link);
  pn_release_js(s); /* the JS object may now be collected */
  f->closed = true;
  /* libuv runs close callbacks last-closed first: a shed handle closed
   * earlier in this turn calls back after this one, into `s`. */
  if (!f->shedding) server_free(s);
}

void pn_server_close(pn_server *s) {
  if (s->base.closing) return;
  s->base.closing = true;
  uv_close(&s->h.handle, server_close_cb);
}

static pn_server *server_new(pn_env *e, bool is_pipe) {
  pn_server *s = calloc(1, sizeof(pn_server_full));
  if (s == NULL) return NULL;
  s->base.penv = e;
  s->base.kind = PN_KIND_SERVER;
  s->base.is_pipe = is_pipe;
  return s;
}

/* ---- accepting ---------------------------------------------------------- */

static void accept_error(pn_server *s, int err) {
  pn_env *e = s->base.penv;
  napi_handle_scope scope;
  napi_value argv[2];
  if (e->cb[PN_CB_ACCEPT_ERROR] == NULL || s->self == NULL) return;
  if (napi_open_handle_scope(e->env, &scope) != napi_ok) return;
  if (napi_get_reference_value(e->env, s->self, &argv[0]) == napi_ok &&
      (argv[1] = pn_err_name(e->env, err)) != NULL)
    pn_call(e, PN_CB_ACCEPT_ERROR, 2, argv);
  napi_close_handle_scope(e->env, scope);
}

/* Hands a connection whose handle holds its fd to JS (onConnection). */
static void deliver_connection(pn_server *s, pn_conn *c) {
  pn_env *e = s->base.penv;
  napi_handle_scope scope;
  napi_value argv[2];

  if (!s->base.is_pipe) {
    uv_tcp_nodelay(&c->h.tcp, 1);
    /* Accepted by libuv, which does not keep the address (accept_batch did). */
    if (c->peer.sa.sa_family == 0) pn_conn_keep_peer(c);
  }
  if (napi_open_handle_scope(e->env, &scope) != napi_ok) {
    pn_conn_close(c);
    return;
  }
  argv[1] = pn_conn_id(c);
  if (argv[1] == NULL || napi_get_reference_value(e->env, s->self, &argv[0]) != napi_ok) {
    pn_clear_exception(e->env);
    pn_conn_close(c);
    napi_close_handle_scope(e->env, scope);
    accept_error(s, UV_ENOMEM);
    return;
  }
  pn_call(e, PN_CB_CONNECTION, 2, argv);
  napi_close_handle_scope(e->env, scope);
}

#ifdef __linux__
/* libuv hands over one connection per turn of the loop, so a burst of
 * connects costs a whole turn (epoll_wait, timers, every phase) per
 * connection. After it, the rest of the backlog is taken here, up to
 * PN_ACCEPT_BATCH at a time, as uvloop and Netty do. Any error but EAGAIN
 * ends the batch and is left in the backlog for libuv's own accept next turn
 * (which reports it, and sheds connections on EMFILE). */
#define PN_ACCEPT_BATCH 64

static void accept_batch(pn_server *s) {
  pn_env *e = s->base.penv;
  uv_os_fd_t lfd;
  if (uv_fileno(&s->h.handle, &lfd) != 0) return;
  for (int i = 0; i < PN_ACCEPT_BATCH; i++) {
    if (s->base.closing || e->tearing_down) return; /* JS may close the server from onConnection */
    /* The peer's address comes with the accept, at no extra cost. */
    struct sockaddr_in6 peer;
    socklen_t peer_len = sizeof(peer);
    memset(&peer, 0, sizeof(peer));
    int fd = s->base.is_pipe ? accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)
                             : accept4(lfd, (struct sockaddr *)&peer, &peer_len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR) continue;
      return;
    }
    int err = 0;
    pn_conn *c = pn_conn_new(e, s->base.is_pipe, &err);
    if (c == NULL) {
      close(fd);
      accept_error(s, err);
      return;
    }
    if (!s->base.is_pipe && peer_len <= sizeof(c->peer)) memcpy(&c->peer, &peer, peer_len);
    err = s->base.is_pipe ? uv_pipe_open(&c->h.pipe, fd) : uv_tcp_open(&c->h.tcp, fd);
    if (err != 0) { /* the handle did not take the fd */
      close(fd);
      pn_conn_close(c);
      accept_error(s, err);
      return;
    }
    deliver_connection(s, c);
  }
}
#endif

static void shed(pn_server *s);

static void shed_close_cb(uv_handle_t *h) {
  pn_server *s = h->data;
  pn_server_full *f = (pn_server_full *)s;
  f->shedding = false;
  if (f->closed) {
    server_free(s);
    return;
  }
  /* Another connection failed while this one was closing: shed it now. */
  if (f->owed && !s->base.closing && !s->base.penv->tearing_down) shed(s);
}

/* Closes the connection libuv accepted for `s` when it cannot have a
 * pn_conn (no memory, or every id in use). libuv keeps an accepted fd until
 * uv_accept takes it, and stops watching the listening socket meanwhile: not
 * taking it would stop the server accepting for good. So it is taken into
 * the server's own spare handle, which is closed at once (the peer sees its
 * connection closed), and libuv watches the socket again; nothing is
 * allocated. libuv may accept the next connection in the same callback, while
 * the spare is still closing: that one waits for the spare's close callback
 * (`owed`; libuv does not watch the socket until then). */
static void shed(pn_server *s) {
  pn_server_full *f = (pn_server_full *)s;
  uv_loop_t *loop = s->base.penv->loop;
  if (f->shedding) {
    f->owed = true;
    return;
  }
  f->owed = false;
  int err = s->base.is_pipe ? uv_pipe_init(loop, &f->shed.pipe, 0) : uv_tcp_init(loop, &f->shed.tcp);
  if (err != 0) return; /* cannot happen: neither allocates nor makes a socket */
  f->shed.handle.data = s;
  uv_accept(&s->h.stream, &f->shed.stream); /* on failure libuv closes the fd */
  f->shedding = true;
  uv_close(&f->shed.handle, shed_close_cb);
}

/* Takes the connection libuv accepted (kept in server->accepted_fd until we
 * call uv_accept; if we did not, libuv would stop watching the listening
 * socket), then the rest of the backlog. */
static void accept_now(pn_server *s, int status) {
  pn_env *e = s->base.penv;
  int err = 0;

  if (status < 0) {
    accept_error(s, status);
    return;
  }
  pn_conn *c = pn_conn_new(e, s->base.is_pipe, &err);
  if (c == NULL) {
    /* Out of memory or ids: this one connection is closed, the server goes
     * on accepting. */
    shed(s);
    accept_error(s, err);
    return;
  }
  err = uv_accept(&s->h.stream, &c->h.stream); /* on failure libuv closes the fd */
  if (err != 0) {
    pn_conn_close(c);
    accept_error(s, err);
    return;
  }
  deliver_connection(s, c);
#ifdef __linux__
  accept_batch(s);
#endif
}

/* libuv calls this when the listening socket is readable and it has accepted
 * a connection. On EMFILE/ENFILE libuv itself sheds the pending connections
 * (its spare-fd trick) and does not call us, so nothing here can spin on
 * that. The connections of one burst reach JS inside one callback scope, as
 * the reads of a batch do: Node runs the nextTick queue and microtasks once,
 * after the last onConnection, not after each (each run of them costs a few
 * hundred bytes of garbage and a turn of Node's tick machinery). */
static void on_connection(uv_stream_t *server, int status) {
  pn_server *s = server->data;
  pn_env *e = s->base.penv;
  pn_scope scope;

  if (s->base.closing || e->tearing_down) return;
  /* Reads that arrived before these connections reach JS first. */
  pn_flush_reads(e);
  if (s->base.closing || e->tearing_down) return;
  bool opened = pn_scope_open(e, &scope);
  accept_now(s, status);
  if (opened) pn_scope_close(e, &scope);
}

/* ---- listenTcp / listenPipe ------------------------------------------------ */

/* Common tail of both listen functions: listen, then create the JS object.
 * On failure closes the handle and throws. */
static napi_value finish_listen(napi_env env, pn_env *e, pn_server *s, int backlog,
                                const char *detail) {
  int err = uv_listen(&s->h.stream, backlog, on_connection);
  if (err != 0) {
    pn_server_close(s);
    pn_throw_uv(env, err, "listen", detail);
    return NULL;
  }
  napi_value obj = pn_new_wrapped(e, s);
  if (obj == NULL) {
    pn_server_close(s);
    pn_throw_napi(env, "creating the server object");
  }
  return obj;
}

static bool check_init(napi_env env, pn_env *e) {
  if (e->have_callbacks) return true;
  napi_throw_error(env, "ERR_NATIVE_NOT_INITIALIZED", "pants_native: call init(callbacks) first");
  return false;
}

static int get_backlog(napi_env env, napi_value v, int *out) {
  int64_t n;
  napi_valuetype t;
  /* napi_get_cb_info fills missing arguments with undefined. */
  if (napi_typeof(env, v, &t) == napi_ok && t == napi_undefined) {
    *out = 511;
    return 1;
  }
  if (!pn_get_int(env, v, "backlog", INT32_MIN, INT32_MAX, &n)) return 0;
  *out = n <= 0 ? 511 : (int)n;
  return 1;
}

/* SO_REUSEPORT on a TCP socket: several sockets (of this process or others)
 * bind one address and port, and the kernel spreads the connections among
 * them. Returns 0 or a libuv error (UV_ENOTSUP where the system has none). */
static int set_reuse_port(int fd) {
#ifdef SO_REUSEPORT
  int one = 1;
  return setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) == 0 ? 0 : uv_translate_sys_error(errno);
#else
  (void)fd;
  return UV_ENOTSUP;
#endif
}

/* The arguments listenTcp and bindTcp share: (host, port, ..., ipv6Only,
 * reusePort) with ipv6Only and reusePort at argv[flags], argv[flags + 1].
 * Fills the address and the text errors name; throws and returns false on
 * a bad one. */
static bool tcp_args(napi_env env, napi_value *argv, size_t argc, size_t flags, const char *what,
                     struct sockaddr_storage *ss, bool *v6only, bool *reuse_port, char *detail,
                     size_t detail_len) {
  int64_t port;
  char label[64];
  if (argc < 2) {
    snprintf(label, sizeof(label), "%s needs a host and a port", what);
    pn_throw_type(env, label);
    return false;
  }
  snprintf(label, sizeof(label), "%s: host", what);
  char *host = pn_get_string(env, argv[0], label, NULL);
  if (host == NULL) return false;
  snprintf(label, sizeof(label), "%s: port", what);
  if (!pn_get_int(env, argv[1], label, 0, 65535, &port)) {
    free(host);
    return false;
  }
  bool *outs[2] = {v6only, reuse_port};
  const char *names[2] = {"ipv6Only", "reusePort"};
  for (size_t i = 0; i < 2; i++) {
    napi_valuetype t = napi_undefined;
    *outs[i] = false;
    napi_typeof(env, argv[flags + i], &t);
    snprintf(label, sizeof(label), "%s: %s", what, names[i]);
    if (t != napi_undefined && !pn_get_bool(env, argv[flags + i], label, outs[i])) {
      free(host);
      return false;
    }
  }
  snprintf(detail, detail_len, strchr(host, ':') ? "[%s]:%d" : "%s:%d", host, (int)port);
  int err = pn_parse_ip(host, (int)port, ss);
  free(host);
  if (err != 0) {
    pn_throw_uv(env, err, "bind", detail);
    return false;
  }
  return true;
}

/* listenTcp(host, port, backlog, ipv6Only, reusePort) */
napi_value pn_listen_tcp(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  pn_env *e;
  int backlog, err;
  bool v6only = false, reuse_port = false;
  struct sockaddr_storage ss;
  char detail[128];

  PN_CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, (void **)&e), "napi_get_cb_info");
  if (!check_init(env, e)) return NULL;
  if (!tcp_args(env, argv, argc, 3, "listenTcp()", &ss, &v6only, &reuse_port, detail, sizeof(detail)) ||
      !get_backlog(env, argv[2], &backlog))
    return NULL;

  pn_server *s = server_new(e, false);
  if (s == NULL) {
    pn_throw_uv(env, UV_ENOMEM, "malloc", NULL);
    return NULL;
  }
  /* _ex creates the socket now, so bind errors come from bind. */
  err = uv_tcp_init_ex(e->loop, &s->h.tcp, ss.ss_family);
  if (err != 0) {
    free(s); /* a failed init leaves nothing on the loop */
    pn_throw_uv(env, err, "socket", detail);
    return NULL;
  }
  s->h.handle.data = s;
  pn_handle_opened(&s->base);
  if (reuse_port) {
    uv_os_fd_t fd;
    err = uv_fileno(&s->h.handle, &fd);
    if (err == 0) err = set_reuse_port(fd);
    if (err != 0) {
      pn_server_close(s);
      pn_throw_uv(env, err, "setsockopt", detail);
      return NULL;
    }
  }
  /* libuv sets SO_REUSEADDR (SO_REUSEPORT only as asked, above). A bind
   * EADDRINUSE is reported by uv_listen (libuv defers it), as Node reports it. */
  err = uv_tcp_bind(&s->h.tcp, (const struct sockaddr *)&ss,
                    v6only && ss.ss_family == AF_INET6 ? UV_TCP_IPV6ONLY : 0);
  if (err != 0) {
    pn_server_close(s);
    pn_throw_uv(env, err, "bind", detail);
    return NULL;
  }
  return finish_listen(env, e, s, backlog, detail);
}

/* bindTcp(host, port, ipv6Only, reusePort): a TCP socket bound (not yet
 * listening) as listenTcp binds its own, returned as a descriptor for
 * node:net to listen on (`server.listen({ fd })`), which then owns it. */
napi_value pn_bind_tcp(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  pn_env *e;
  bool v6only = false, reuse_port = false;
  struct sockaddr_storage ss;
  char detail[128];
  int one = 1, err = 0;

  PN_CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, (void **)&e), "napi_get_cb_info");
  if (!tcp_args(env, argv, argc, 2, "bindTcp()", &ss, &v6only, &reuse_port, detail, sizeof(detail))) return NULL;
#ifdef SOCK_CLOEXEC
  int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
#else /* macOS: no flag, set it after */
  int fd = socket(ss.ss_family, SOCK_STREAM, 0);
  if (fd >= 0) fcntl(fd, F_SETFD, FD_CLOEXEC);
#endif
  if (fd < 0) {
    pn_throw_uv(env, uv_translate_sys_error(errno), "socket", detail);
    return NULL;
  }
  const char *syscall = "setsockopt";
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0) err = uv_translate_sys_error(errno);
  if (err == 0 && reuse_port) err = set_reuse_port(fd);
  if (err == 0 && ss.ss_family == AF_INET6 &&
      setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, v6only ? &one : &(int){0}, sizeof(one)) != 0)
    err = uv_translate_sys_error(errno);
  if (err == 0) {
    socklen_t len = ss.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    syscall = "bind";
    if (bind(fd, (struct sockaddr *)&ss, len) != 0) err = uv_translate_sys_error(errno);
  }
  if (err != 0) {
    close(fd);
    pn_throw_uv(env, err, syscall, detail);
    return NULL;
  }
  napi_value out;
  if (napi_create_int32(env, fd, &out) != napi_ok) {
    close(fd);
    pn_throw_napi(env, "returning the descriptor");
    return NULL;
  }
  return out;
}

/* A libuv without uv_pipe_bind2 (pn_uv_has_pipe2): bind a socket ourselves
 * (abstract names need an explicit address length) and hand it to
 * uv_pipe_open. */
static int bind_pipe_fallback(uv_pipe_t *p, const char *name, size_t len) {
  struct sockaddr_un sa;
  int fd;
  if (len == 0 || len > sizeof(sa.sun_path) - (name[0] != '\0')) return UV_EINVAL;
  memset(&sa, 0, sizeof(sa));
  sa.sun_family = AF_UNIX;
  memcpy(sa.sun_path, name, len);
#ifdef SOCK_CLOEXEC
  fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
#else /* macOS: no flag, set it after */
  fd = socket(AF_UNIX, SOCK_STREAM, 0);
  if (fd >= 0) fcntl(fd, F_SETFD, FD_CLOEXEC);
#endif
  if (fd < 0) return uv_translate_sys_error(errno);
  if (bind(fd, (struct sockaddr *)&sa, (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len)) != 0) {
    int err = uv_translate_sys_error(errno);
    close(fd);
    /* As libuv's uv_pipe_bind reports it (and node:net with it): a missing directory is EACCES. */
    return err == UV_ENOENT ? UV_EACCES : err;
  }
  int err = uv_pipe_open(p, fd);
  if (err != 0) close(fd);
  return err;
}

/* listenPipe(path, backlog) */
napi_value pn_listen_pipe(napi_env env, napi_callback_info info) {
  size_t argc = 2, len = 0;
  napi_value argv[2];
  pn_env *e;
  int backlog, err;
  char detail[128];

  PN_CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, (void **)&e), "napi_get_cb_info");
  if (!check_init(env, e)) return NULL;
  if (argc < 1) {
    pn_throw_type(env, "listenPipe(path, backlog) needs a path");
    return NULL;
  }
  char *path = pn_get_string(env, argv[0], "listenPipe(): path", &len);
  if (path == NULL) return NULL;
  if (!get_backlog(env, argv[1], &backlog)) {
    free(path);
    return NULL;
  }
  /* An abstract name is shown as "@name", as ss(8) does. */
  snprintf(detail, sizeof(detail), "%s%s", path[0] == '\0' ? "@" : "",
           path[0] == '\0' ? path + 1 : path);

  pn_server *s = server_new(e, true);
  if (s == NULL) {
    free(path);
    pn_throw_uv(env, UV_ENOMEM, "malloc", NULL);
    return NULL;
  }
  s->path = path;
  s->path_len = len;
  uv_pipe_init(e->loop, &s->h.pipe, 0);
  s->h.handle.data = s;
  pn_handle_opened(&s->base);
  if (len == 0) {
    err = UV_EINVAL;
  } else {
#if PN_HEADERS_HAVE_PIPE2
    if (pn_uv_has_pipe2()) {
      /* NO_TRUNCATE: a name too long for sun_path is an error, not silently
       * cut. libuv unlinks a bound path when the handle closes. */
      err = uv_pipe_bind2(&s->h.pipe, path, len, UV_PIPE_NO_TRUNCATE);
    } else
#endif
    {
      err = bind_pipe_fallback(&s->h.pipe, path, len);
      if (err == 0 && path[0] != '\0') ((pn_server_full *)s)->unlink_on_close = true;
    }
  }
  if (err != 0) {
    pn_server_close(s);
    pn_throw_uv(env, err, "bind", detail);
    return NULL;
  }
  return finish_listen(env, e, s, backlog, detail);
}

/* listenFd(fd, backlog): serves a stream socket this process was handed
 * (systemd's socket activation, a parent's descriptor), TCP or UNIX, bound
 * and usually listening already (libuv listens again, which only sets the
 * backlog). The server owns it from then on: its close closes it. A UNIX
 * socket's path is not removed at close: whoever bound it owns the name. */
napi_value pn_listen_fd(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  pn_env *e;
  int64_t fd;
  int backlog, type = 0, err;
  socklen_t type_len = sizeof(type);
  struct sockaddr_storage ss;
  socklen_t ss_len = sizeof(ss);
  char detail[32];

  PN_CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, (void **)&e), "napi_get_cb_info");
  if (!check_init(env, e)) return NULL;
  if (!pn_get_int(env, argv[0], "listenFd(): fd", 0, INT32_MAX, &fd) || !get_backlog(env, argv[1], &backlog)) return NULL;
  snprintf(detail, sizeof(detail), "fd %d", (int)fd);
  /* EBADF (not open), ENOTSOCK (a file or a pipe); each failure is the
   * listen's, as node:net names a bad descriptor's (its code is EINVAL). */
  if (getsockopt((int)fd, SOL_SOCKET, SO_TYPE, &type, &type_len) != 0) {
    pn_throw_uv(env, uv_translate_sys_error(errno), "listen", detail);
    return NULL;
  }
  memset(&ss, 0, sizeof(ss));
  if (getsockname((int)fd, (struct sockaddr *)&ss, &ss_len) != 0) {
    pn_throw_uv(env, uv_translate_sys_error(errno), "listen", detail);
    return NULL;
  }
  const bool is_pipe = ss.ss_family == AF_UNIX;
  if (type != SOCK_STREAM || (!is_pipe && ss.ss_family != AF_INET && ss.ss_family != AF_INET6)) {
    /* A datagram socket, or a family that is neither TCP/IP nor UNIX. */
    pn_throw_uv(env, type != SOCK_STREAM ? UV_ENOTSUP : UV_EAFNOSUPPORT, "listen", detail);
    return NULL;
  }
  /* A connected socket (systemd's Accept=yes passes those, or a wrong
   * descriptor such as a socketpair on stdout): listen(2) would fail with
   * EINVAL and the close take the descriptor with it. Refused, untaken. */
  struct sockaddr_storage peer;
  socklen_t peer_len = sizeof(peer);
  if (getpeername((int)fd, (struct sockaddr *)&peer, &peer_len) == 0) {
    pn_throw_uv(env, UV_EISCONN, "listen", detail);
    return NULL;
  }
  pn_server *s = server_new(e, is_pipe);
  if (s == NULL) {
    pn_throw_uv(env, UV_ENOMEM, "malloc", detail);
    return NULL;
  }
  if (is_pipe) uv_pipe_init(e->loop, &s->h.pipe, 0);
  else uv_tcp_init(e->loop, &s->h.tcp);
  s->h.handle.data = s;
  pn_handle_opened(&s->base);
  /* Not taken on failure: the descriptor stays the caller's. */
  err = is_pipe ? uv_pipe_open(&s->h.pipe, (uv_file)fd) : uv_tcp_open(&s->h.tcp, (uv_os_sock_t)fd);
  if (err == 0 && is_pipe) {
    /* The bound name, for address(), as a connection's is read (an
     * abstract one starts with NUL). */
    char name[sizeof(((struct sockaddr_un *)0)->sun_path) + 1];
    size_t len = sizeof(name);
    err = uv_pipe_getsockname(&s->h.pipe, name, &len);
    if (err == 0 && (s->path = malloc(len + 1)) == NULL) err = UV_ENOMEM;
    if (err == 0) {
      memcpy(s->path, name, len);
      s->path[len] = '\0';
      s->path_len = len;
    }
  }
  if (err != 0) {
    pn_server_close(s);
    pn_throw_uv(env, err, "listen", detail);
    return NULL;
  }
  return finish_listen(env, e, s, backlog, detail);
}

/* ---- server methods ------------------------------------------------------ */

static pn_server *this_server(napi_env env, napi_callback_info info, bool *ok) {
  napi_value self;
  size_t argc = 0;
  if (napi_get_cb_info(env, info, &argc, NULL, &self, NULL) != napi_ok) {
    *ok = false;
    pn_throw_napi(env, "napi_get_cb_info");
    return NULL;
  }
  pn_server *s = pn_unwrap(env, self, ok);
  return s != NULL && s->base.closing ? NULL : s;
}

/* address() -> { address, port, family } | { path } | null once closed */
static napi_value server_address(napi_env env, napi_callback_info info) {
  bool ok;
  napi_value result;
  pn_server *s = this_server(env, info, &ok);
  if (!ok) return NULL;
  if (s == NULL) {
    napi_get_null(env, &result);
    return result;
  }
  if (s->base.is_pipe) return pn_path_object(env, s->path, s->path_len);
  struct sockaddr_storage ss;
  int len = sizeof(ss);
  memset(&ss, 0, sizeof(ss));
  if (uv_tcp_getsockname(&s->h.tcp, (struct sockaddr *)&ss, &len) != 0) {
    napi_get_null(env, &result);
    return result;
  }
  return pn_sockaddr_object(env, &ss);
}

/* close(): idempotent. */
static napi_value server_close(napi_env env, napi_callback_info info) {
  bool ok;
  pn_server *s = this_server(env, info, &ok);
  if (s != NULL) pn_server_close(s);
  return NULL;
}

static napi_value server_fd(napi_env env, napi_callback_info info) {
  bool ok;
  napi_value result;
  uv_os_fd_t fd = -1;
  pn_server *s = this_server(env, info, &ok);
  if (!ok) return NULL;
  if (s == NULL || uv_fileno(&s->h.handle, &fd) != 0) fd = -1;
  napi_create_int32(env, fd, &result);
  return result;
}

static napi_value server_ref(napi_env env, napi_callback_info info) {
  bool ok;
  pn_server *s = this_server(env, info, &ok);
  if (s != NULL) uv_ref(&s->h.handle);
  return NULL;
}

static napi_value server_unref(napi_env env, napi_callback_info info) {
  bool ok;
  pn_server *s = this_server(env, info, &ok);
  if (s != NULL) uv_unref(&s->h.handle);
  return NULL;
}

static napi_value server_ctor(napi_env env, napi_callback_info info) {
  napi_value self;
  pn_env *e;
  if (napi_get_cb_info(env, info, NULL, NULL, &self, (void **)&e) != napi_ok) return NULL;
  if (!e->constructing) {
    pn_throw_type(env, "NativeServer objects are created by listenTcp() / listenPipe()");
    return NULL;
  }
  return self;
}

bool pn_server_define(pn_env *e) {
  napi_value cls;
  napi_property_descriptor props[] = {
      {"address", NULL, server_address, NULL, NULL, NULL, napi_default, e},
      {"close", NULL, server_close, NULL, NULL, NULL, napi_default, e},
      {"ref", NULL, server_ref, NULL, NULL, NULL, napi_default, e},
      {"unref", NULL, server_unref, NULL, NULL, NULL, napi_default, e},
      {"fd", NULL, NULL, server_fd, NULL, NULL, napi_default, e},
  };
  return napi_define_class(e->env, "NativeServer", NAPI_AUTO_LENGTH, server_ctor, e,
                           sizeof(props) / sizeof(props[0]), props, &cls) == napi_ok &&
         napi_create_reference(e->env, cls, 1, &e->server_ctor) == napi_ok;
}
