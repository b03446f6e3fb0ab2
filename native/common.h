/*
 * pants_native: a Node-API addon that drives libuv TCP and pipe handles
 * directly from Node's event loop, without Node's stream layer.
 *
 * This header holds the types every file shares and the functions they call
 * in one another. One concern per file:
 *
 *   addon.c    module init, per-environment state, init(callbacks), calling
 *              into JS, the deferred-work queue, environment teardown
 *   util.c     argument parsing, errors, address objects, wrapping
 *   server.c   listenTcp / listenPipe, accepting, the server object
 *   conn.c     connections: ids, connect, close, options, addresses
 *   read.c     reading: alloc/read callbacks and frame delivery to JS
 *   write.c    write / writev / shutdown
 *   framing.c  the pure-C frame scanner (no Node-API, no libuv)
 *
 * Lifetimes, in one place:
 *   - Every uv handle lives inside a malloc'd struct (pn_server, pn_conn) that
 *     is freed only in the handle's uv_close callback, and uv_close is called
 *     exactly once (guarded by the `closing` flag).
 *   - A connection has no JS object of its own: JS knows it by its id, a
 *     small integer (slot | generation << PN_SLOT_BITS) that every conn
 *     function takes first and every callback passes first. The slot table
 *     (pn_env.slots) maps ids to live pn_conns; the close callback empties
 *     the slot after onClose and bumps its generation, so an id JS kept
 *     after onClose reads as a closed connection's. The generation has 9
 *     bits (the id has no more room: it travels as an int32 whose negative
 *     values mean "no connection", and the slot needs 22), so a slot's ids
 *     come round again after 512 takes of it. What keeps that far apart
 *     (PN_SLOT_REUSE_MIN in conn.c): a freed slot is taken again only while
 *     at least 256 slots are free, and free slots are taken first-in
 *     first-out, so between two takes of a slot from the free queue at
 *     least 255 other connections are opened. Hence a kept id names nothing
 *     until more than 511 * 256 (130 816) connections have been opened
 *     after it; only when the table is full (2^22 slots) or cannot grow (no
 *     memory) is a slot taken with fewer free, and then ids may come round
 *     sooner. No wrapper object, no napi_wrap, no references per connection
 *     (uvloop-sized connections).
 *   - A listening socket is a JS object wrapping a tiny pn_box (napi_wrap).
 *     The box is owned by the JS object (freed by the wrap finalizer when the
 *     object is collected) and points at the pn_server until the close
 *     callback clears it, so an object that outlives its handle never
 *     reaches freed memory. While the handle is open the pn_server holds a
 *     strong napi_ref to the object; the close callback drops it.
 *   - JS is only ever called from libuv callbacks (never from inside a method
 *     call made by JS); errors that a method discovers synchronously are
 *     reported later through the deferred queue (addon.c).
 */
#ifndef PANTS_NATIVE_COMMON_H
#define PANTS_NATIVE_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <node_api.h>
#include <uv.h>

/* uv_pipe_bind2 and uv_pipe_connect2 (explicit lengths: Linux abstract
 * names) came with libuv 1.46. An addon built against a Node that has them
 * may be loaded by an older Node 20 that does not (Node 20.0 has libuv
 * 1.44): called there, the dynamic linker ends the process ("undefined
 * symbol: uv_pipe_bind2"). So they are weak references, and used only when
 * pn_uv_has_pipe2() says the running libuv has them. */
#define PN_HEADERS_HAVE_PIPE2 (UV_VERSION_HEX >= 0x012e00)
#if PN_HEADERS_HAVE_PIPE2 && defined(__ELF__)
#pragma weak uv_pipe_bind2
#pragma weak uv_pipe_connect2
#endif
bool pn_uv_has_pipe2(void);

/* Size of the one read buffer each event loop shares (see read.c). Bulk
 * transfers read up to this much per system call (uvloop reads ~250 KB). */
#define PN_READ_BUF_SIZE (256 * 1024)

/* A connection's pending bytes P keep a buffer up to this size between
 * reads; a bigger one is shrunk or freed once the big frame is gone. */
#define PN_KEEP_CAP (64 * 1024)

/* Reads land in the spare (see read.c) while at least this much of it is
 * left; a read of more than PN_SLAB_PIECE bytes that lands there is handed
 * to JS as a view of it, and the next read goes into what follows. */
#define PN_SPARE_MIN (64 * 1024)

/* Delivered bytes (P + a read) of at most PN_SLAB_PIECE go into the shared
 * PN_SLAB_SIZE slab; larger ones get an ArrayBuffer of their own. A frame
 * JS keeps holds its whole slab alive, as a Buffer.allocUnsafe() slice
 * holds Node's 8 KiB pool. */
#define PN_SLAB_SIZE (32 * 1024)
#define PN_SLAB_PIECE (4 * 1024)

/* While JS has paused a connection, libuv goes on reading it, in reads of
 * at most this many bytes kept in P, until P holds this much: as node:net's
 * paused socket fills its readable buffer up to its highWaterMark (16 KiB)
 * before it stops reading, a peer's reset or FIN is seen while paused (the
 * read takes the socket's error), not only once resumed or by a write. */
#define PN_PAUSED_HOLD (16 * 1024)

/* A connection whose reads fill their buffer one after another is read no
 * more this turn of the loop once they add up to this many bytes (see
 * alloc_cb): libuv reads a ready socket until a read comes back short, up
 * to 32 times, which is 8 MiB at PN_READ_BUF_SIZE a read (node:net: 2 MiB
 * of 64 KiB reads), all of one peer's before any other connection's. */
#define PN_READ_RUN (256 * 1024)

/* Reads of at most this many bytes are batched; larger ones (bulk
 * transfers) are delivered at once. */
#define PN_BATCH_READ (16 * 1024)

/* Frame offsets travel to JS in an Int32Array, so everything the framing
 * buffers (one frame, plus one read) must stay far below 2^31. */
#define PN_MAX_LIMIT ((size_t)1 << 30)     /* largest frame limit / size */
#define PN_MAX_DELIMITER ((size_t)64 * 1024) /* longest bytes delimiter */

/* Indexes of the JS callbacks registered by init(). */
enum {
  PN_CB_CONNECTION,
  PN_CB_READ_BATCH, /* onReadBatch: every read (read.c) */
  PN_CB_END,
  PN_CB_ERROR,
  PN_CB_WRITTEN,
  PN_CB_CONNECT,
  PN_CB_CLOSE,
  PN_CB_UNCAUGHT,
  PN_CB_ACCEPT_ERROR, /* optional */
  PN_CB_SHUTDOWN,     /* optional */
  PN_CB_COUNT
};

/* Intrusive doubly-linked list node. A list head is a pn_link whose next and
 * prev point at itself when empty. */
typedef struct pn_link {
  struct pn_link *prev;
  struct pn_link *next;
} pn_link;

void pn_list_init(pn_link *head);
void pn_list_push(pn_link *head, pn_link *node);
void pn_list_remove(pn_link *node); /* safe on a node not in any list */
static inline bool pn_list_empty(const pn_link *head) { return head->next == head; }
/* Moves every node of `from`, in order, to the front of `to`; `from` is
 * left empty. */
void pn_list_splice_front(pn_link *to, pn_link *from);

#define pn_container_of(ptr, type, member) \
  ((type *)((char *)(ptr) - offsetof(type, member)))

/* What a JS object wraps. `ptr` is the live pn_server / pn_conn, or NULL once
 * the handle has been freed. Owned by the JS object. */
typedef struct pn_box {
  void *ptr; /* the pn_server */
} pn_box;

typedef struct pn_env pn_env;

/* Per-environment state (one per Node environment, i.e. per event loop: the
 * main thread and each worker thread get their own). Stored as the addon's
 * instance data. */
struct pn_env {
  napi_env env;
  uv_loop_t *loop;

  napi_ref cb[PN_CB_COUNT]; /* NULL until init() */
  bool have_callbacks;
  napi_async_context actx; /* one async context for every call into JS */
  napi_ref actx_resource;

  /* Connection ids (see conn.c): slots[i] is the live connection in slot
   * i or NULL; gens[i] the generation of slot i's current (or next) id. */
  struct pn_conn **slots;
  uint16_t *gens;
  /* Emptied slots, a first-in first-out queue linked through free_next
   * (free_next[i] follows slot i), from free_head to free_tail. */
  uint32_t *free_next;
  uint32_t free_head, free_tail;
  uint32_t free_count;
  uint32_t slots_used;  /* slots [0, slots_used) have been taken once */
  uint32_t slots_cap;

  napi_ref server_ctor;
  bool constructing; /* set while the addon itself instantiates a class */

  /* The shared read buffer: alloc_cb hands it to every read; read_cb
   * consumes it before libuv can ask for the next one (see read.c). */
  char *read_buf;
  /* Preferred over read_buf when present: the memory of a JS Buffer no JS
   * code has seen yet, so that a large raw read can be handed over as it
   * is, without a copy (see read.c). */
  napi_ref spare_ref;
  uint8_t *spare;
  size_t spare_used; /* bytes of the spare already handed to JS */
  /* Connections that lend their reads (lendReads(true), nothing pending) read
   * into `lend`, the memory of a Buffer no JS has seen, which is lent to
   * the one call that delivers the read and detached after it; a new one
   * takes its place, which malloc mostly serves from the memory just freed
   * (see read.c). NULL when it could not be made: reads are copied then. */
  napi_ref lend_ref;
  uint8_t *lend;

  /* The current slab: an ArrayBuffer that small reads are copied into, one
   * after another, so that a read costs no allocation (see read.c). */
  napi_ref slab_ref;
  size_t slab_used;

  /* Read batching (see read.c): small reads of one poll phase wait in
   * `batch` (their connections in `ready`, in arrival order) and reach JS
   * together, inside one callback scope, from the check handle that runs
   * right after the poll phase, or earlier, before any other event. */
  uint8_t *batch;
  size_t batch_len;
  size_t batch_cap;
  pn_link ready;
  bool flushing;     /* inside pn_flush_reads */
  bool in_scope;     /* ... with its callback scope open: JS calls use napi_call_function */
  /* The read table every delivery to JS goes through (read.c): the
   * Int32Array, its storage (bt[0] is JS's cursor) and capacity; while a
   * batch is built and delivered, the words used, the entries, and the
   * slab that holds their bytes. */
  napi_ref btab_ref;
  int32_t *bt;
  size_t bt_cap, bt_words;
  bool batching; /* this flush batches its reads */
  struct pn_batch_ent *bt_ent;
  size_t bt_count, bt_ent_cap;
  napi_value bt_slab;
  uint8_t *bt_slab_data;
  /* The addon's own copy of each entry's old P, at the entry's offset in the
   * slab (PN_SLAB_SIZE bytes, made at the first need): a handler may detach
   * the slab, and an entry that leaves the batch needs its old P back. */
  uint8_t *bt_keep;
  bool bt_sending; /* JS is delivering the batch */
  uv_check_t check;
  bool check_ready;  /* uv_check_init succeeded */
  bool check_closed; /* uv_close called on it (teardown) */

  /* Every pn_server and pn_conn whose close callback has not run yet. */
  pn_link handles;
  size_t handle_count;

  /* Connections with deferred work (see pn_defer), and the idle handle that
   * runs it on the next loop iteration. */
  pn_link deferred;
  uv_idle_t idle;
  bool idle_ready;  /* uv_idle_init succeeded */
  bool idle_closed; /* uv_close called on it (teardown) */

  /* Environment teardown (worker exit, process end): close everything
   * without calling into JS. */
  napi_async_cleanup_hook_handle cleanup_hook;
  bool tearing_down;
};

/* What every handle struct starts with. */
typedef enum { PN_KIND_SERVER = 1, PN_KIND_CONN = 2 } pn_kind;

typedef struct pn_base {
  pn_link link;   /* in env->handles */
  pn_env *penv;
  pn_kind kind;
  bool is_pipe;
  bool closing;   /* uv_close has been called */
} pn_base;

typedef union pn_uv_stream {
  uv_handle_t handle;
  uv_stream_t stream;
  uv_tcp_t tcp;
  uv_pipe_t pipe;
} pn_uv_stream;

/* ---- framing (framing.c) ---------------------------------------------- */

enum { PN_FRAME_RAW = 0, PN_FRAME_DELIM = 1, PN_FRAME_SIZE = 2 };

/* Delimiters of at most this many bytes live inside pn_framing (no malloc
 * per connection, or per switch of delimiter). */
#define PN_DELIM_INLINE 8

/* Every length here is below 2^31 (PN_MAX_LIMIT, plus one read), so they are
 * 32-bit: this struct is in every connection. */
typedef struct pn_framing {
  int kind;
  uint32_t dlen;  /* PN_FRAME_DELIM: the delimiter's length */
  union {
    uint8_t inl[PN_DELIM_INLINE]; /* dlen <= PN_DELIM_INLINE */
    uint8_t *heap;                /* longer: an owned copy */
  } d;
  uint32_t size;  /* PN_FRAME_SIZE */
  uint32_t limit; /* largest frame allowed */

  /* P: bytes received but not yet delivered as a frame. */
  uint8_t *pend;
  uint32_t plen;
  uint32_t pcap;
  /* Offset in P from which the delimiter search resumes (every position
   * before it is known not to start a delimiter). */
  uint32_t scanned;
} pn_framing;

/* The delimiter's bytes. */
static inline const uint8_t *pn_delim(const pn_framing *fr) {
  return fr->dlen <= PN_DELIM_INLINE ? fr->d.inl : fr->d.heap;
}

/* Outcome of one pn_scan() call. Offsets are into the virtual concatenation
 * P + new bytes. */
typedef struct pn_scan_result {
  size_t count;   /* complete frames written to `out` */
  size_t rest;    /* offset just past the last complete frame's delimiter */
  size_t search;  /* where a later delimiter search may resume */
  bool overflow;  /* the frame starting at `rest` is over the limit */
  bool full;      /* `out` had no room for more: call again from `rest` */
} pn_scan_result;

void pn_framing_init(pn_framing *fr);
void pn_framing_free(pn_framing *fr);
/* Drops P and the delimiter; back to raw. */
void pn_framing_reset(pn_framing *fr);
/* Sets the delimiter (a copy of `delim`, `dlen` bytes, up to
 * PN_MAX_DELIMITER; 0 drops it). Returns false on allocation failure (the
 * old delimiter is then kept). */
bool pn_framing_set_delim(pn_framing *fr, const uint8_t *delim, size_t dlen);
/* Scans P (fr->pend, fr->plen) followed by `nb`/`nn` for complete frames,
 * starting with a frame at `start` whose delimiter search may begin at
 * `search_from`. Writes [start, end) pairs to `out` (room for `max_frames`
 * pairs). */
void pn_scan(const pn_framing *fr, const uint8_t *nb, size_t nn, size_t start,
             size_t search_from, int32_t *out, size_t max_frames,
             pn_scan_result *res);
/* Makes P = (P + nb)[from..]. Returns false on allocation failure (P is then
 * left empty). */
bool pn_framing_keep(pn_framing *fr, const uint8_t *nb, size_t nn, size_t from);

/* ---- connections (conn.c, read.c, write.c) ---------------------------- */

/* Deferred work bits (pn_conn.defer_bits). */
enum {
  PN_DEFER_CONNECT_ERROR = 1, /* report defer_connect_err via onConnect */
  PN_DEFER_WRITE_ERROR = 2,   /* report defer_write_err via onError(write) */
  PN_DEFER_SHUTDOWN_ERROR = 4,/* report defer_shutdown_err via onError(shutdown) */
  PN_DEFER_DELIVER = 8,       /* P may hold deliverable bytes: run delivery */
  PN_DEFER_END = 16,          /* report the EOF held back for P's frames (end_pending) */
  PN_DEFER_READ_NOMEM = 32    /* report ENOMEM via onError(read): setFraming found no memory */
};

/* Connection ids: the low PN_SLOT_BITS bits are the slot, the bits above
 * (up to bit 30, so an id is a small integer in V8) the slot's generation. */
#define PN_SLOT_BITS 22
#define PN_SLOT_MASK ((1u << PN_SLOT_BITS) - 1)
#define PN_GEN_MASK ((1u << (31 - PN_SLOT_BITS)) - 1)

typedef struct pn_conn {
  pn_base base;
  pn_uv_stream h;
  int32_t id;        /* what JS knows this connection by; -1 once freed */
  bool reading;      /* what JS asked for (readStart/readStop) */
  bool uv_reading;   /* libuv reads: also while JS has paused, until P holds PN_PAUSED_HOLD */
  bool eof;          /* the peer's FIN was read */
  bool shut;         /* shutdown() was called */
  bool connecting;   /* a connect request is in flight */
  bool write_error_reported;
  bool bytes_lost;   /* a write's bytes were dropped (no memory): close with a reset */
  bool fin_failed;   /* shutdown() could not queue the FIN: a close dropping writes resets */
  bool need_deliver; /* P may hold frames that were not delivered yet */
  bool end_pending;  /* EOF read while P held deliverable frames: onEnd waits for them */
  bool lend_reads;   /* reads are lent to JS (lendReads), not given */
  bool yielded;      /* alloc_cb ended this turn's reads (PN_READ_RUN) */
  uint64_t bytes_read; /* every byte read, framed into P or not (bytesRead) */
  uint32_t run_bytes;  /* bytes of the reads in a row that filled their buffer */

  /* Connect and shutdown requests are malloc'd when made and freed by their
   * callbacks (an idle connection does not carry them). */
  unsigned write_reqs; /* uv_write requests not yet called back */

  pn_framing fr;
  /* Bumped by setFraming() / resetFraming() so the read path can tell what
   * JS changed from inside a delivery (pn_deliver). */
  uint32_t set_gen;
  uint32_t reset_gen;

  pn_link ready_link; /* in env->ready while a batched read waits */
  uint32_t batch_off; /* where that read's bytes are in env->batch */
  uint32_t batch_n;
  int32_t bt_idx;     /* its entry in the batch being delivered, or -1 */
  /* TCP: the peer's address, kept from the accept or the connect (sa_family
   * 0 until known): getpeername() fails once a reset has closed the socket,
   * and a handler reading remoteAddress in onClose must still get it. Here,
   * after bt_idx, it takes the padding before defer_link, away from the
   * fields the read path touches first. */
  union {
    struct sockaddr sa;
    struct sockaddr_in in4;
    struct sockaddr_in6 in6;
  } peer;

  pn_link defer_link; /* in env->deferred while defer_bits != 0 */
  unsigned defer_bits;
  int defer_connect_err;
  int defer_write_err;
  int defer_shutdown_err;
} pn_conn;

typedef struct pn_server {
  pn_base base;
  pn_uv_stream h;
  pn_box *box;    /* NULL until the JS object exists */
  napi_ref self;  /* strong ref to the JS object while the handle is open */
  char *path;     /* pipes: the name as given (may start with '\0') */
  size_t path_len;
} pn_server;

/* ---- addon.c ------------------------------------------------------------ */

/* Calls callback `which` with argv through napi_make_callback (so Node runs
 * nextTicks and microtasks afterwards). A JS exception goes to onUncaught.
 * The caller must have a handle scope open. Does nothing for an optional
 * callback that is not set, or during teardown. */
void pn_call(pn_env *e, int which, size_t argc, napi_value *argv);
/* A callback scope around several JS calls (a batch of reads, a burst of
 * accepts): while open, pn_call uses napi_call_function and Node runs the
 * nextTick queue and microtasks once, when it closes. Inside another one it
 * opens only a handle scope. */
typedef struct pn_scope {
  napi_handle_scope hs;
  napi_callback_scope cs;
  bool scoped; /* this one opened the callback scope */
} pn_scope;
/* False when not even the handle scope could be opened (then nothing is
 * open). Without a callback scope every call is a napi_make_callback of its
 * own: slower, same behaviour. */
bool pn_scope_open(pn_env *e, pn_scope *s);
void pn_scope_close(pn_env *e, pn_scope *s);
/* Queues deferred work for a connection (runs on the next loop iteration). */
void pn_defer(pn_conn *c, unsigned bits);
/* Takes deferred work back (bits pn_defer set and that have not run). */
void pn_undefer(pn_conn *c, unsigned bits);
/* Bookkeeping for handles (env->handles). */
void pn_handle_opened(pn_base *b);
/* Called at the end of every close callback, after the struct is unlinked:
 * finishes teardown when the last handle is gone. */
void pn_handle_closed(pn_env *e, pn_base *b);

/* ---- util.c ------------------------------------------------------------- */

/* Throws an Error like Node's errno exceptions: message "<syscall> <CODE>:
 * <description>[ <detail>]", with .code, .errno and .syscall. */
void pn_throw_uv(napi_env env, int err, const char *syscall, const char *detail);
void pn_throw_type(napi_env env, const char *msg);
void pn_throw_range(napi_env env, const char *msg);
/* Throws a generic error for a failed napi_* call unless one is pending. */
void pn_throw_napi(napi_env env, const char *what);
/* Drops the exception a failed napi_* call may have left pending (Node's
 * ERR_MEMORY_ALLOCATION_FAILED, say), where the failure is handled without
 * JS: left pending, it would make the next call into JS fail
 * (napi_pending_exception), losing that call, and reach onUncaught. */
void pn_clear_exception(napi_env env);

/* A byte count as a JS number (NULL on failure). */
napi_value pn_size_value(napi_env env, size_t n);
/* napi_value for libuv error `err`'s name ("ECONNRESET"), or null for 0. */
napi_value pn_err_name(napi_env env, int err);

/* Reads a JS string argument as a malloc'd, NUL-terminated UTF-8 string
 * (embedded NULs kept; *len excludes the terminator). Throws and returns
 * NULL on failure. */
char *pn_get_string(napi_env env, napi_value v, const char *what, size_t *len);
bool pn_get_int(napi_env env, napi_value v, const char *what, int64_t lo,
                int64_t hi, int64_t *out);
bool pn_get_bool(napi_env env, napi_value v, const char *what, bool *out);

/* { address, port, family } from a sockaddr, or null. */
napi_value pn_sockaddr_object(napi_env env, const struct sockaddr_storage *ss);
/* { path } from bytes (trailing NULs of an abstract name trimmed). */
napi_value pn_path_object(napi_env env, const char *path, size_t len);

/* Creates an instance of the server class (no JS-visible constructor call),
 * wraps a new pn_box pointing at `s`, and takes the strong ref. Returns the
 * object or NULL (with an exception pending or not). */
napi_value pn_new_wrapped(pn_env *e, pn_server *s);
/* The live server behind `obj`, or NULL if the handle is gone. Throws (and
 * returns NULL with *ok=false) if `obj` is not one of our servers. */
pn_server *pn_unwrap(napi_env env, napi_value obj, bool *ok);
/* Called in a close callback: detach the JS object (box->ptr = NULL) and
 * drop the strong ref. */
void pn_release_js(pn_server *s);

/* Parses an IP literal + port into a sockaddr (uv_ip4_addr/uv_ip6_addr). */
int pn_parse_ip(const char *host, int port, struct sockaddr_storage *ss);

/* ---- server.c / conn.c -------------------------------------------------- */

napi_value pn_listen_tcp(napi_env env, napi_callback_info info);
napi_value pn_bind_tcp(napi_env env, napi_callback_info info);
napi_value pn_listen_pipe(napi_env env, napi_callback_info info);
napi_value pn_listen_fd(napi_env env, napi_callback_info info);
bool pn_server_define(pn_env *e);
void pn_server_close(pn_server *s);

napi_value pn_connect_tcp(napi_env env, napi_callback_info info);
napi_value pn_connect_pipe(napi_env env, napi_callback_info info);
/* Defines `exports.conn`, the object of connection functions. */
bool pn_conn_export(pn_env *e, napi_value exports);
/* Allocates a pn_conn with an initialised uv handle and an id, already in
 * env->handles (so from here on it is released with pn_conn_close, which
 * frees it in the close callback). Returns NULL on failure (uv error in
 * *err). */
pn_conn *pn_conn_new(pn_env *e, bool is_pipe, int *err);
void pn_conn_close(pn_conn *c);
/* Keeps the peer's address of a connected TCP conn in c->peer (see there);
 * sa_family stays 0 when the kernel cannot tell it. */
void pn_conn_keep_peer(pn_conn *c);
/* The connection a conn function was called for: its first argument is the
 * id; the other arguments (if argc/argv are given) are stored in argv.
 * NULL once closed or closing (or for the id of a connection that is gone).
 * *ok is false, with a TypeError pending, when the id is not a number. */
pn_conn *pn_conn_arg(napi_env env, napi_callback_info info, size_t *argc,
                     napi_value *argv, bool *ok);
/* The id of `c` as a JS number (for callbacks). */
napi_value pn_conn_id(pn_conn *c);
/* Calls a one-argument callback (onEnd, onWritten, onShutdown) or
 * onError(conn, code, syscall) for `c`, unless it is closing. */
void pn_conn_emit(pn_conn *c, int which);
void pn_conn_emit_error(pn_conn *c, int err, const char *syscall);
/* Runs the deferred work queued for `c` (addon.c calls this). */
void pn_conn_run_deferred(pn_conn *c, unsigned bits);

/* read.c */
napi_value pn_conn_read_start(napi_env env, napi_callback_info info);
napi_value pn_conn_read_stop(napi_env env, napi_callback_info info);
napi_value pn_conn_lend_reads(napi_env env, napi_callback_info info);
/* Whether [p, p + n) lies in the block a read is lent from (write.c copies
 * such bytes before it queues them: the block is detached after the call). */
bool pn_is_lent(const pn_env *e, const uint8_t *p, size_t n);
napi_value pn_conn_set_framing(napi_env env, napi_callback_info info);
napi_value pn_conn_reset_framing(napi_env env, napi_callback_info info);
napi_value pn_conn_take_pending(napi_env env, napi_callback_info info);
/* Frames and hands to JS whatever P plus the new bytes hold. */
void pn_deliver(pn_conn *c, const uint8_t *nb, size_t nn);
/* malloc-tune.c: glibc settings that keep bulk reads from faulting pages in
 * again and again (once per process; see the file): at load, and at the
 * first bulk read. */
void pn_tune_malloc(void);
void pn_tune_malloc_bulk(void);

/* Delivers the batched reads now (no-op when there are none, or while
 * already delivering them). */
void pn_flush_reads(pn_env *e);
/* JS is about to pause, re-frame, reset or close `c`: if its read waits in
 * the batch JS is delivering, it leaves the batch (see read.c). */
void pn_batch_touch(pn_conn *c);

/* The check handle's callback (addon.c starts and stops it). */
void pn_check_cb(uv_check_t *h);

/* write.c */
napi_value pn_conn_write(napi_env env, napi_callback_info info);
napi_value pn_conn_writev(napi_env env, napi_callback_info info);
napi_value pn_conn_shutdown(napi_env env, napi_callback_info info);
napi_value pn_conn_pending_bytes(napi_env env, napi_callback_info info);
napi_value pn_conn_delivered_bytes(napi_env env, napi_callback_info info);
napi_value pn_delivered_bytes_of(napi_env env, napi_callback_info info);
napi_value pn_conn_bytes_read(napi_env env, napi_callback_info info);

/* Shorthand for napi calls inside a function that returns napi_value. */
#define PN_CHECK(env, call, what)          \
  do {                                     \
    if ((call) != napi_ok) {               \
      pn_throw_napi((env), (what));        \
      return NULL;                         \
    }                                      \
  } while (0)

#endif /* PANTS_NATIVE_COMMON_H */
