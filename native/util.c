/*
 * Small helpers shared by the other files: lists, argument parsing, errors,
 * address objects, byte counts as JS numbers, and wrapping a listening
 * socket in its JS object (connections have ids instead; see conn.c).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/un.h>

#include "common.h"

/* ---- lists -------------------------------------------------------------- */

void pn_list_init(pn_link *head) { head->prev = head->next = head; }

void pn_list_push(pn_link *head, pn_link *node) {
  node->prev = head->prev;
  node->next = head;
  head->prev->next = node;
  head->prev = node;
}

void pn_list_splice_front(pn_link *to, pn_link *from) {
  if (pn_list_empty(from)) return;
  pn_link *first = from->next, *last = from->prev;
  last->next = to->next;
  to->next->prev = last;
  to->next = first;
  first->prev = to;
  pn_list_init(from);
}

void pn_list_remove(pn_link *node) {
  if (node->next == NULL) return; /* never linked */
  node->prev->next = node->next;
  node->next->prev = node->prev;
  node->prev = node->next = NULL;
}

/* ---- errors ------------------------------------------------------------- */

static void set_string_prop(napi_env env, napi_value obj, const char *key,
                            const char *value) {
  napi_value v;
  if (napi_create_string_utf8(env, value, NAPI_AUTO_LENGTH, &v) == napi_ok)
    napi_set_named_property(env, obj, key, v);
}

void pn_throw_uv(napi_env env, int err, const char *syscall, const char *detail) {
  char msg[512];
  napi_value message, error, errnum;
  snprintf(msg, sizeof(msg), "%s %s: %s%s%s", syscall, uv_err_name(err),
           uv_strerror(err), detail != NULL ? " " : "", detail != NULL ? detail : "");
  if (napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &message) != napi_ok ||
      napi_create_error(env, NULL, message, &error) != napi_ok) {
    napi_throw_error(env, uv_err_name(err), msg);
    return;
  }
  set_string_prop(env, error, "code", uv_err_name(err));
  if (napi_create_int32(env, err, &errnum) == napi_ok)
    napi_set_named_property(env, error, "errno", errnum);
  set_string_prop(env, error, "syscall", syscall);
  napi_throw(env, error);
}

void pn_throw_type(napi_env env, const char *msg) {
  napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", msg);
}

void pn_throw_range(napi_env env, const char *msg) {
  napi_throw_range_error(env, "ERR_OUT_OF_RANGE", msg);
}

void pn_throw_napi(napi_env env, const char *what) {
  bool pending = false;
  if (napi_is_exception_pending(env, &pending) == napi_ok && pending) return;
  const napi_extended_error_info *info = NULL;
  char msg[256];
  napi_get_last_error_info(env, &info);
  snprintf(msg, sizeof(msg), "pants_native: %s failed (%s)", what,
           info != NULL && info->error_message != NULL ? info->error_message : "unknown error");
  napi_throw_error(env, "ERR_NATIVE_INTERNAL", msg);
}

void pn_clear_exception(napi_env env) {
  bool pending = false;
  napi_value ignored;
  if (napi_is_exception_pending(env, &pending) == napi_ok && pending)
    napi_get_and_clear_last_exception(env, &ignored);
}

napi_value pn_err_name(napi_env env, int err) {
  napi_value v = NULL;
  if (err == 0) napi_get_null(env, &v);
  else napi_create_string_utf8(env, uv_err_name(err), NAPI_AUTO_LENGTH, &v);
  return v;
}

/* ---- arguments ---------------------------------------------------------- */

char *pn_get_string(napi_env env, napi_value v, const char *what, size_t *len) {
  napi_valuetype t;
  size_t n = 0;
  char msg[160];
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_string) {
    snprintf(msg, sizeof(msg), "%s must be a string", what);
    pn_throw_type(env, msg);
    return NULL;
  }
  if (napi_get_value_string_utf8(env, v, NULL, 0, &n) != napi_ok) {
    pn_throw_napi(env, "napi_get_value_string_utf8");
    return NULL;
  }
  char *s = malloc(n + 1);
  if (s == NULL) {
    pn_throw_uv(env, UV_ENOMEM, "malloc", NULL);
    return NULL;
  }
  if (napi_get_value_string_utf8(env, v, s, n + 1, &n) != napi_ok) {
    free(s);
    pn_throw_napi(env, "napi_get_value_string_utf8");
    return NULL;
  }
  s[n] = '\0';
  if (len != NULL) *len = n;
  return s;
}

bool pn_get_int(napi_env env, napi_value v, const char *what, int64_t lo,
                int64_t hi, int64_t *out) {
  napi_valuetype t;
  double d;
  char msg[200];
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_number ||
      napi_get_value_double(env, v, &d) != napi_ok) {
    snprintf(msg, sizeof(msg), "%s must be a number", what);
    pn_throw_type(env, msg);
    return false;
  }
  if (d != d || d < (double)lo || d > (double)hi || d != (double)(int64_t)d) {
    snprintf(msg, sizeof(msg), "%s must be an integer from %lld to %lld", what,
             (long long)lo, (long long)hi);
    pn_throw_range(env, msg);
    return false;
  }
  *out = (int64_t)d;
  return true;
}

bool pn_get_bool(napi_env env, napi_value v, const char *what, bool *out) {
  napi_valuetype t;
  char msg[160];
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_boolean ||
      napi_get_value_bool(env, v, out) != napi_ok) {
    snprintf(msg, sizeof(msg), "%s must be a boolean", what);
    pn_throw_type(env, msg);
    return false;
  }
  return true;
}

/* ---- addresses ---------------------------------------------------------- */

int pn_parse_ip(const char *host, int port, struct sockaddr_storage *ss) {
  memset(ss, 0, sizeof(*ss));
  if (strchr(host, ':') != NULL)
    return uv_ip6_addr(host, port, (struct sockaddr_in6 *)ss);
  return uv_ip4_addr(host, port, (struct sockaddr_in *)ss);
}

napi_value pn_sockaddr_object(napi_env env, const struct sockaddr_storage *ss) {
  char ip[INET6_ADDRSTRLEN + 1 + UV_IF_NAMESIZE] = {0};
  int port, family;
  napi_value obj, v;
  if (ss->ss_family == AF_INET) {
    const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
    if (uv_ip4_name(a, ip, sizeof(ip)) != 0) goto none;
    port = ntohs(a->sin_port);
    family = 4;
  } else if (ss->ss_family == AF_INET6) {
    const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
    if (uv_ip6_name(a, ip, sizeof(ip)) != 0) goto none;
    /* A link-local address names its interface, as node:net's do
     * ("fe80::1%eth0"): without it the address cannot be used again. */
    if (IN6_IS_ADDR_LINKLOCAL(&a->sin6_addr) && a->sin6_scope_id > 0) {
      size_t len = strlen(ip), room = sizeof(ip) - len - 1;
      ip[len] = '%';
      if (uv_if_indextoiid(a->sin6_scope_id, ip + len + 1, &room) != 0) ip[len] = '\0';
    }
    port = ntohs(a->sin6_port);
    family = 6;
  } else {
    goto none;
  }
  if (napi_create_object(env, &obj) != napi_ok) goto none;
  if (napi_create_string_utf8(env, ip, NAPI_AUTO_LENGTH, &v) != napi_ok ||
      napi_set_named_property(env, obj, "address", v) != napi_ok ||
      napi_create_int32(env, port, &v) != napi_ok ||
      napi_set_named_property(env, obj, "port", v) != napi_ok ||
      napi_create_int32(env, family, &v) != napi_ok ||
      napi_set_named_property(env, obj, "family", v) != napi_ok)
    goto none;
  return obj;
none:
  napi_get_null(env, &obj);
  return obj;
}

bool pn_uv_has_pipe2(void) {
#if PN_HEADERS_HAVE_PIPE2
#if defined(__ELF__)
  if (uv_pipe_bind2 == NULL || uv_pipe_connect2 == NULL) return false;
#endif
  return uv_version() >= 0x012e00;
#else
  return false;
#endif
}

napi_value pn_path_object(napi_env env, const char *path, size_t len) {
  napi_value obj, v;
  /* An abstract name bound by libuv < 1.48 (node:net, and this addon, on
   * Node 20) fills all of sun_path, padded with NULs: the name given is
   * what precedes them. A name of any other length was bound by its exact
   * bytes (libuv 1.48, Node 22; Python, systemd) and is kept as it is, a
   * NUL at its end included. */
  if (len == sizeof(((struct sockaddr_un *)0)->sun_path) && path[0] == '\0')
    while (len > 1 && path[len - 1] == '\0') len--;
  if (napi_create_object(env, &obj) != napi_ok ||
      napi_create_string_utf8(env, path, len, &v) != napi_ok ||
      napi_set_named_property(env, obj, "path", v) != napi_ok) {
    napi_get_null(env, &obj);
  }
  return obj;
}

napi_value pn_size_value(napi_env env, size_t n) {
  napi_value v;
  /* A small integer when it fits: V8 makes no heap number for it. */
  napi_status st = n <= INT32_MAX ? napi_create_int32(env, (int32_t)n, &v)
                                  : napi_create_double(env, (double)n, &v);
  return st == napi_ok ? v : NULL;
}

/* ---- wrapping ----------------------------------------------------------- */

static void box_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  /* The handle is closed by now: the strong ref kept the object alive while
   * it was open. */
  free(data);
}

napi_value pn_new_wrapped(pn_env *e, pn_server *s) {
  napi_env env = e->env;
  napi_value ctor, obj;
  if (napi_get_reference_value(env, e->server_ctor, &ctor) != napi_ok || ctor == NULL)
    return NULL;
  e->constructing = true;
  napi_status st = napi_new_instance(env, ctor, 0, NULL, &obj);
  e->constructing = false;
  if (st != napi_ok) return NULL;
  pn_box *box = malloc(sizeof(*box));
  if (box == NULL) return NULL;
  box->ptr = s;
  if (napi_wrap(env, obj, box, box_finalize, NULL, NULL) != napi_ok) {
    free(box);
    return NULL;
  }
  /* From here on the box belongs to the object. */
  if (napi_create_reference(env, obj, 1, &s->self) != napi_ok) {
    box->ptr = NULL;
    s->self = NULL;
    return NULL;
  }
  s->box = box;
  return obj;
}

pn_server *pn_unwrap(napi_env env, napi_value obj, bool *ok) {
  void *data = NULL;
  *ok = true;
  /* Only servers are wrapped (connections are ids). */
  if (napi_unwrap(env, obj, &data) != napi_ok || data == NULL) {
    pn_clear_exception(env);
    *ok = false;
    pn_throw_type(env, "this is not a pants_native server");
    return NULL;
  }
  return ((pn_box *)data)->ptr;
}

void pn_release_js(pn_server *s) {
  if (s->box != NULL) {
    s->box->ptr = NULL;
    s->box = NULL;
  }
  if (s->self != NULL) {
    napi_delete_reference(s->base.penv->env, s->self);
    s->self = NULL;
  }
}
