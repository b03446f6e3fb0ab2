/*
 * Module init, per-environment state, the JS callbacks registry, calling into
 * JS, the deferred-work queue and environment teardown.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

/* Callback property names, in PN_CB_* order, and whether they are required. */
static const struct {
  const char *name;
  bool required;
} cb_names[PN_CB_COUNT] = {
    {"onConnection", true}, {"onReadBatch", true}, {"onEnd", true},
    {"onError", true},      {"onWritten", true},   {"onConnect", true},
    {"onClose", true},      {"onUncaught", true},  {"onAcceptError", false},
    {"onShutdown", false},
};

/* ---- calling into JS ---------------------------------------------------- */

/* A callback threw: hand the exception to onUncaught. If that throws too (or
 * is missing), raise it as a process-level uncaught exception, which is what
 * Node does for an exception thrown by any other I/O callback. */
static void report_exception(pn_env *e) {
  napi_env env = e->env;
  bool pending = false;
  napi_value err, fn, recv, result;
  if (napi_is_exception_pending(env, &pending) != napi_ok || !pending) return;
  if (napi_get_and_clear_last_exception(env, &err) != napi_ok) return;
  if (e->cb[PN_CB_UNCAUGHT] != NULL &&
      napi_get_reference_value(env, e->cb[PN_CB_UNCAUGHT], &fn) == napi_ok &&
      fn != NULL && napi_get_global(env, &recv) == napi_ok) {
    if (napi_make_callback(env, e->actx, recv, fn, 1, &err, &result) == napi_ok) return;
    pending = false;
    napi_is_exception_pending(env, &pending);
    if (!pending) return; /* e.g. the environment is shutting down */
    napi_get_and_clear_last_exception(env, &err);
  }
  napi_fatal_exception(env, err);
}

/* Calls callback `which` inside a callback scope that is open already: Node
 * runs nextTicks and microtasks once, when the scope closes. */
static void call_in_scope(pn_env *e, int which, size_t argc, napi_value *argv) {
  napi_value fn, recv, result;
  if (napi_get_reference_value(e->env, e->cb[which], &fn) != napi_ok || fn == NULL) return;
  /* The callbacks do not use `this`; undefined costs less than the global. */
  if (napi_get_undefined(e->env, &recv) != napi_ok) return;
  if (napi_call_function(e->env, recv, fn, argc, argv, &result) != napi_ok) report_exception(e);
}

void pn_call(pn_env *e, int which, size_t argc, napi_value *argv) {
  napi_env env = e->env;
  napi_value fn, recv, result;
  if (e->tearing_down || e->cb[which] == NULL) return;
  if (e->in_scope) {
    /* Inside the batch's callback scope. */
    call_in_scope(e, which, argc, argv);
    return;
  }
  /* Batched reads that arrived before this event reach JS before it. */
  if (!e->flushing && !pn_list_empty(&e->ready)) pn_flush_reads(e);
  if (e->tearing_down) return;
  /* Through a callback scope of its own, as a batch of reads is: what the
   * callback throws goes to onUncaught, and what a nextTick or a microtask
   * it queued throws, run when the scope closes, is a process-level uncaught
   * exception, as after any of Node's own I/O callbacks. (Through
   * napi_make_callback such an exception came back here and went to
   * onUncaught through a second napi_make_callback while the failed tick's
   * async id was still on the stack: with async hooks on, AsyncLocalStorage
   * say, Node aborted on execution_async_id() == 0.) */
  pn_scope scope;
  if (pn_scope_open(e, &scope)) {
    if (scope.scoped) {
      call_in_scope(e, which, argc, argv);
      pn_scope_close(e, &scope);
      return;
    }
    pn_scope_close(e, &scope);
  }
  if (e->tearing_down) return;
  if (napi_get_reference_value(env, e->cb[which], &fn) != napi_ok || fn == NULL) return;
  /* napi_make_callback needs an object receiver: the global, as Node's own
   * I/O callbacks get for plain functions. */
  if (napi_get_global(env, &recv) != napi_ok) return;
  /* napi_make_callback (not napi_call_function): Node treats this as the top
   * of a macrotask, running the nextTick queue and microtasks afterwards. */
  if (napi_make_callback(env, e->actx, recv, fn, argc, argv, &result) != napi_ok)
    report_exception(e);
}

bool pn_scope_open(pn_env *e, pn_scope *s) {
  napi_value resource;
  s->scoped = false;
  if (napi_open_handle_scope(e->env, &s->hs) != napi_ok) return false;
  if (!e->in_scope && e->actx_resource != NULL &&
      napi_get_reference_value(e->env, e->actx_resource, &resource) == napi_ok && resource != NULL &&
      napi_open_callback_scope(e->env, resource, e->actx, &s->cs) == napi_ok) {
    s->scoped = true;
    e->in_scope = true;
  }
  return true;
}

void pn_scope_close(pn_env *e, pn_scope *s) {
  if (s->scoped) {
    e->in_scope = false;
    napi_close_callback_scope(e->env, s->cs);
  }
  napi_close_handle_scope(e->env, s->hs);
}

/* init(callbacks) */
static napi_value js_init(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], fns[PN_CB_COUNT];
  pn_env *e;
  napi_valuetype t;
  char msg[128];

  PN_CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, (void **)&e), "napi_get_cb_info");
  if (argc < 1 || napi_typeof(env, argv[0], &t) != napi_ok || t != napi_object) {
    pn_throw_type(env, "init() expects an object of callbacks");
    return NULL;
  }
  /* Validate everything before replacing anything. */
  for (int i = 0; i < PN_CB_COUNT; i++) {
    PN_CHECK(env, napi_get_named_property(env, argv[0], cb_names[i].name, &fns[i]),
             "napi_get_named_property");
    PN_CHECK(env, napi_typeof(env, fns[i], &t), "napi_typeof");
    if (t == napi_function) continue;
    if (!cb_names[i].required && (t == napi_undefined || t == napi_null)) {
      fns[i] = NULL;
      continue;
    }
    snprintf(msg, sizeof(msg), "init(): callbacks.%s must be a function", cb_names[i].name);
    pn_throw_type(env, msg);
    return NULL;
  }
  if (e->actx == NULL) {
    napi_value resource, name;
    PN_CHECK(env, napi_create_object(env, &resource), "napi_create_object");
    PN_CHECK(env, napi_create_string_utf8(env, "pants_native", NAPI_AUTO_LENGTH, &name),
             "napi_create_string_utf8");
    PN_CHECK(env, napi_create_reference(env, resource, 1, &e->actx_resource),
             "napi_create_reference");
    PN_CHECK(env, napi_async_init(env, resource, name, &e->actx), "napi_async_init");
  }

  /* Calling init() again replaces the callbacks. */
  for (int i = 0; i < PN_CB_COUNT; i++) {
    if (e->cb[i] != NULL) {
      napi_delete_reference(env, e->cb[i]);
      e->cb[i] = NULL;
    }
    if (fns[i] != NULL)
      PN_CHECK(env, napi_create_reference(env, fns[i], 1, &e->cb[i]), "napi_create_reference");
  }
  e->have_callbacks = true;
  return NULL;
}

/* ---- deferred work ------------------------------------------------------ */

/* Methods called by JS never call back into JS. What they must report (a
 * connect that failed at once, a write on a dead socket) is queued here and
 * reported from an idle callback on the next loop iteration. */
static void idle_cb(uv_idle_t *h) {
  pn_env *e = h->data;
  pn_link batch;

  /* Take the current queue: work queued while it runs waits for the next
   * iteration, so a callback that keeps queueing cannot starve the loop. */
  if (pn_list_empty(&e->deferred)) {
    uv_idle_stop(h);
    return;
  }
  pn_list_init(&batch);
  pn_list_splice_front(&batch, &e->deferred);

  while (!pn_list_empty(&batch)) {
    pn_link *node = batch.next;
    pn_list_remove(node);
    pn_conn *c = pn_container_of(node, pn_conn, defer_link);
    unsigned bits = c->defer_bits;
    c->defer_bits = 0;
    /* A connection is freed only in its close callback, which libuv runs in
     * a later phase of the loop, so `c` is valid for this whole loop. */
    pn_conn_run_deferred(c, bits);
    if (e->tearing_down) {
      /* The rest still has work (defer_bits) and must stay in env->deferred,
       * where the close callbacks unlink them: left on `batch`, their links
       * would point into this stack frame once it returns. They go back in
       * front of what was queued meanwhile (pn_defer queues nothing once
       * tearing down), in their order. Unreachable today: teardown never
       * runs inside a JS call. */
      pn_list_splice_front(&e->deferred, &batch);
      return;
    }
  }
  if (pn_list_empty(&e->deferred)) uv_idle_stop(h);
}

void pn_defer(pn_conn *c, unsigned bits) {
  pn_env *e = c->base.penv;
  if (e->tearing_down || c->base.closing || !e->idle_ready) return;
  if (c->defer_bits == 0) pn_list_push(&e->deferred, &c->defer_link);
  c->defer_bits |= bits;
  if (!uv_is_active((uv_handle_t *)&e->idle)) uv_idle_start(&e->idle, idle_cb);
}

/* Takes `bits` back from what is deferred for c (its list entry goes with the last). */
void pn_undefer(pn_conn *c, unsigned bits) {
  if ((c->defer_bits & bits) == 0) return;
  c->defer_bits &= ~bits;
  if (c->defer_bits == 0) pn_list_remove(&c->defer_link);
}

/* ---- handles and teardown ------------------------------------------------ */

void pn_handle_opened(pn_base *b) {
  pn_env *e = b->penv;
  pn_list_push(&e->handles, &b->link);
  e->handle_count++;
}

static void maybe_finish_teardown(pn_env *e) {
  if (!e->tearing_down || e->handle_count > 0 || e->idle_ready || e->check_ready) return;
  if (e->cleanup_hook != NULL) {
    napi_async_cleanup_hook_handle h = e->cleanup_hook;
    e->cleanup_hook = NULL;
    /* Tells Node our asynchronous cleanup is done. */
    napi_remove_async_cleanup_hook(h);
  }
}

void pn_handle_closed(pn_env *e, pn_base *b) {
  (void)b;
  e->handle_count--;
  maybe_finish_teardown(e);
}

static void idle_close_cb(uv_handle_t *h) {
  pn_env *e = h->data;
  e->idle_ready = false;
  maybe_finish_teardown(e);
}

static void check_close_cb(uv_handle_t *h) {
  pn_env *e = h->data;
  e->check_ready = false;
  maybe_finish_teardown(e);
}

/* The environment is going away (worker exit, end of the main script). Close
 * every handle without calling into JS; Node keeps running the loop until
 * the last close callback tells it we are done (maybe_finish_teardown).
 * Without this a worker would exit with our handles still on its loop. */
static void teardown_hook(napi_async_cleanup_hook_handle handle, void *arg) {
  pn_env *e = arg;
  (void)handle;
  e->tearing_down = true;
  for (pn_link *n = e->handles.next; n != &e->handles; n = n->next) {
    pn_base *b = pn_container_of(n, pn_base, link);
    if (b->closing) continue;
    if (b->kind == PN_KIND_SERVER) pn_server_close((pn_server *)b);
    else pn_conn_close((pn_conn *)b);
  }
  if (e->idle_ready && !e->idle_closed) {
    e->idle_closed = true;
    uv_close((uv_handle_t *)&e->idle, idle_close_cb);
  }
  if (e->check_ready && !e->check_closed) {
    e->check_closed = true;
    uv_close((uv_handle_t *)&e->check, check_close_cb);
  }
  maybe_finish_teardown(e);
}

static void env_finalize(napi_env env, void *data, void *hint) {
  pn_env *e = data;
  (void)hint;
  for (int i = 0; i < PN_CB_COUNT; i++)
    if (e->cb[i] != NULL) napi_delete_reference(env, e->cb[i]);
  if (e->actx != NULL) napi_async_destroy(env, e->actx);
  if (e->actx_resource != NULL) napi_delete_reference(env, e->actx_resource);
  if (e->server_ctor != NULL) napi_delete_reference(env, e->server_ctor);
  if (e->slab_ref != NULL) napi_delete_reference(env, e->slab_ref);
  if (e->spare_ref != NULL) napi_delete_reference(env, e->spare_ref);
  if (e->lend_ref != NULL) napi_delete_reference(env, e->lend_ref);
  if (e->btab_ref != NULL) napi_delete_reference(env, e->btab_ref);
  free(e->bt_ent);
  free(e->bt_keep);
  free(e->batch);
  free(e->read_buf);
  free(e->slots);
  free(e->gens);
  free(e->free_next);
  free(e);
}

static pn_env *env_create(napi_env env) {
  pn_env *e = calloc(1, sizeof(*e));
  if (e == NULL) {
    napi_throw_error(env, "ENOMEM", "pants_native: out of memory");
    return NULL;
  }
  e->env = env;
  pn_list_init(&e->handles);
  pn_list_init(&e->deferred);
  pn_list_init(&e->ready);
  e->read_buf = malloc(PN_READ_BUF_SIZE);
  if (e->read_buf == NULL) {
    free(e);
    napi_throw_error(env, "ENOMEM", "pants_native: out of memory for the read buffer");
    return NULL;
  }
  if (napi_get_uv_event_loop(env, &e->loop) != napi_ok) {
    free(e->read_buf);
    free(e);
    napi_throw_error(env, "ERR_NATIVE_INTERNAL", "pants_native: cannot get the event loop");
    return NULL;
  }
  if (!pn_server_define(e)) goto fail;
  if (napi_set_instance_data(env, e, env_finalize, NULL) != napi_ok) goto fail;
  /* From here on env_finalize owns e. */
  if (uv_idle_init(e->loop, &e->idle) == 0) {
    e->idle.data = e;
    e->idle_ready = true;
  }
  if (uv_check_init(e->loop, &e->check) == 0) {
    e->check.data = e;
    e->check_ready = true;
    /* Started only while reads wait, and never what keeps the loop alive. */
    uv_unref((uv_handle_t *)&e->check);
  }
  if (napi_add_async_cleanup_hook(env, teardown_hook, e, &e->cleanup_hook) != napi_ok) {
    e->cleanup_hook = NULL;
    if (e->idle_ready) {
      e->idle_closed = true;
      uv_close((uv_handle_t *)&e->idle, idle_close_cb);
    }
    if (e->check_ready) {
      e->check_closed = true;
      uv_close((uv_handle_t *)&e->check, check_close_cb);
    }
    pn_throw_napi(env, "napi_add_async_cleanup_hook");
    return NULL;
  }
  return e;
fail:
  if (e->server_ctor != NULL) napi_delete_reference(env, e->server_ctor);
  free(e->read_buf);
  free(e);
  pn_throw_napi(env, "defining classes");
  return NULL;
}

NAPI_MODULE_INIT(/* napi_env env, napi_value exports */) {
  pn_env *e = NULL;
  pn_tune_malloc();
  /* The module may be initialised more than once in one environment (e.g.
   * after its require.cache entry is deleted): share the state. */
  if (napi_get_instance_data(env, (void **)&e) != napi_ok) e = NULL;
  if (e == NULL && (e = env_create(env)) == NULL) return NULL;

  /* The largest delimiter and frame size the addon cuts itself: the JS side
   * frames anything beyond them over raw native reads. */
  napi_value max_delimiter, max_frame_size;
  if (napi_create_double(env, (double)PN_MAX_DELIMITER, &max_delimiter) != napi_ok ||
      napi_create_double(env, (double)PN_MAX_LIMIT, &max_frame_size) != napi_ok) {
    pn_throw_napi(env, "napi_create_double");
    return NULL;
  }
  napi_property_descriptor props[] = {
      {"maxDelimiter", NULL, NULL, NULL, NULL, max_delimiter, napi_enumerable, NULL},
      {"maxFrameSize", NULL, NULL, NULL, NULL, max_frame_size, napi_enumerable, NULL},
      {"init", NULL, js_init, NULL, NULL, NULL, napi_enumerable, e},
      {"listenTcp", NULL, pn_listen_tcp, NULL, NULL, NULL, napi_enumerable, e},
      {"bindTcp", NULL, pn_bind_tcp, NULL, NULL, NULL, napi_enumerable, e},
      {"listenPipe", NULL, pn_listen_pipe, NULL, NULL, NULL, napi_enumerable, e},
      {"listenFd", NULL, pn_listen_fd, NULL, NULL, NULL, napi_enumerable, e},
      {"connectTcp", NULL, pn_connect_tcp, NULL, NULL, NULL, napi_enumerable, e},
      {"connectPipe", NULL, pn_connect_pipe, NULL, NULL, NULL, napi_enumerable, e},
      {"deliveredBytesOf", NULL, pn_delivered_bytes_of, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  if (napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props) != napi_ok ||
      !pn_conn_export(e, exports)) {
    pn_throw_napi(env, "napi_define_properties");
    return NULL;
  }
  return exports;
}
