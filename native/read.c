/*
 * Reading: libuv's alloc/read callbacks, readStart/readStop, the framing
 * settings, and handing bytes or frames to JS (onReadBatch).
 *
 * One 256 KiB buffer per event loop serves every read: alloc_cb hands out the
 * same buffer each time. That is safe because libuv calls alloc_cb and then
 * read_cb for one read at a time, and read_cb consumes the bytes (copies them
 * into a JS Buffer or into the connection's pending bytes P) before it
 * returns. JS cannot start another read from inside a call: libuv reads only
 * from the loop's poll phase.
 *
 * What JS gets is a copy: small deliveries are carved one after another out
 * of a shared ArrayBuffer slab (no allocation per read), larger ones get an
 * ArrayBuffer of their own; JS receives the ArrayBuffer, and the offset and
 * length travel in the read table (below). One exception saves the copy
 * where it costs most: once there has been a large read, reads land in a
 * spare Buffer, 256 KiB no JS has seen, from the first byte not handed out
 * yet. A read of more than PN_SLAB_PIECE bytes with nothing pending before
 * it (any raw read of bulk transfer) is handed over where it landed, as a
 * piece of the spare, and the next read lands right after it; when less
 * than PN_SPARE_MIN is left, a new spare replaces it. Smaller reads are
 * copied out as usual, and their room in the spare serves again. Either
 * way the rule holds: consumed before the next read.
 *
 * A connection whose handler only borrows its chunks (lendReads(true); JS:
 * Stream.reuseReadBuffer) reads into a block of its own kind, lent to JS
 * for one call and taken back after it (see "lent reads").
 *
 * Every read reaches JS the same way, as an entry of the read table, an
 * Int32Array reused by every call: onReadBatch(block, table, count), with
 * `count` entries from table[PN_BT_FIRST] on,
 *   [size, count, id, offset, length, count pairs [start, end), rest]
 * (size: the entry's words; count 0: raw mode, -1: a frame overflowed the
 * limit; offsets into `block`, the pairs relative to `offset`). A batch of
 * small reads is many entries in one call; any other read is a call with
 * one entry (pn_deliver).
 */
#include <stdlib.h>
#include <string.h>

#include "common.h"

/* ---- the bytes handed to JS ---------------------------------------------- */

/* `len` bytes of the current slab (a new one when it is full, missing, or was
 * detached by JS): *ab is the slab, *off where the piece starts. */
static uint8_t *slab_take(pn_env *e, size_t len, napi_value *ab, size_t *off) {
  napi_env env = e->env;
  void *data = NULL;
  size_t cap = 0;
  if (e->slab_ref != NULL && e->slab_used + len <= PN_SLAB_SIZE &&
      napi_get_reference_value(env, e->slab_ref, ab) == napi_ok && *ab != NULL &&
      napi_get_arraybuffer_info(env, *ab, &data, &cap) == napi_ok && data != NULL &&
      cap == PN_SLAB_SIZE) {
    *off = e->slab_used;
    e->slab_used += len;
    return (uint8_t *)data + *off;
  }
  if (napi_create_arraybuffer(env, PN_SLAB_SIZE, &data, ab) != napi_ok) {
    /* The caller goes on without it (bt_add: the read goes alone). */
    pn_clear_exception(env);
    return NULL;
  }
  if (e->slab_ref != NULL) napi_delete_reference(env, e->slab_ref);
  if (napi_create_reference(env, *ab, 1, &e->slab_ref) != napi_ok) e->slab_ref = NULL;
  *off = 0;
  e->slab_used = len;
  return data;
}

/* A new Buffer's memory (len bytes, not zero-filled: an ArrayBuffer would
 * be, only for a copy to overwrite it), as its ArrayBuffer *ab and the
 * offset *off of the bytes in it. */
static uint8_t *new_buffer(pn_env *e, size_t len, napi_value *ab, size_t *off) {
  void *data = NULL;
  napi_value buf;
  napi_typedarray_type type;
  size_t length;
  if (napi_create_buffer(e->env, len, &data, &buf) != napi_ok ||
      napi_get_typedarray_info(e->env, buf, &type, &length, &data, ab, off) != napi_ok)
    return NULL;
  return data;
}

static bool lend_piece(pn_env *e, size_t len, napi_value *ab, size_t *off);

/* P + nb, one after the other, at dst. */
static void put_bytes(uint8_t *dst, const pn_framing *fr, const uint8_t *nb, size_t nn) {
  if (fr->plen > 0) memcpy(dst, fr->pend, fr->plen);
  if (nn > 0) memcpy(dst + fr->plen, nb, nn);
}

/* Copies P + nb (one copy) into memory JS can see: a piece of the slab when
 * small, else an ArrayBuffer of its own; or, for a large read that landed in
 * the spare with nothing pending, no copy (lend_piece). *ab, *off and the
 * length P + nb say where. (A lent read is not copied either: pn_deliver.) */
static bool make_data(pn_env *e, const pn_framing *fr, const uint8_t *nb, size_t nn,
                      napi_value *ab, size_t *off) {
  size_t len = fr->plen + nn;
  uint8_t *dst;
  if (fr->plen == 0 && nn > PN_SLAB_PIECE && e->spare != NULL && nb == e->spare + e->spare_used)
    return lend_piece(e, nn, ab, off);
  if (len <= PN_SLAB_PIECE) {
    dst = slab_take(e, len, ab, off);
    if (dst == NULL) return false;
  } else {
    dst = new_buffer(e, len, ab, off);
    if (dst == NULL) return false;
  }
  put_bytes(dst, fr, nb, nn);
  return true;
}

/* ---- the spare read buffer ---------------------------------------------- */

/* A new Buffer of PN_READ_BUF_SIZE bytes for reads to land in, held by
 * *ref, or NULL (reads are copied until the next try). What JS gets are
 * offsets into the whole ArrayBuffer: the bytes must start it. */
static uint8_t *make_read_block(pn_env *e, napi_ref *ref) {
  napi_value ab;
  size_t off;
  uint8_t *data = new_buffer(e, PN_READ_BUF_SIZE, &ab, &off);
  if (data == NULL || off != 0 || napi_create_reference(e->env, ab, 1, ref) != napi_ok) {
    /* Optional: reads are copied instead. Made just before the call that
     * delivers a read (make_spare) or inside lendReads(), which must not
     * throw for it. */
    pn_clear_exception(e->env);
    *ref = NULL;
    return NULL;
  }
  return data;
}

/* Reads land in env->spare, from spare_used on, when there is a spare: the
 * memory of a Buffer whose bytes from spare_used on no JS has seen. */
static void make_spare(pn_env *e) {
  pn_tune_malloc_bulk();
  e->spare = make_read_block(e, &e->spare_ref);
  e->spare_used = 0;
}

/* JS may detach an ArrayBuffer it was shown (a handler that transfers
 * chunk.buffer to a worker: structuredClone(ab, {transfer: [ab]})), and from
 * then on its memory belongs to the new owner, or is freed with it. So
 * memory of a block JS has seen is written or read again only after
 * checking that the block still has it: the spare before a read lands in
 * it (alloc_cb), the block a read was delivered in before its unframed
 * tail is copied (pn_deliver). Needs a handle scope. */
static bool block_holds(napi_env env, napi_value ab, const uint8_t *p, size_t n) {
  void *data = NULL;
  size_t len = 0;
  return ab != NULL && napi_get_arraybuffer_info(env, ab, &data, &len) == napi_ok && data != NULL &&
         p >= (const uint8_t *)data && p + n <= (const uint8_t *)data + len;
}

/* Whether the spare is still the memory of its Buffer (see block_holds);
 * drops it when not. A spare no JS has seen (spare_used 0) always is. */
static bool spare_intact(pn_env *e) {
  if (e->spare_used == 0) return true;
  napi_handle_scope scope;
  napi_value ab = NULL;
  if (napi_open_handle_scope(e->env, &scope) != napi_ok) return false;
  bool ok = napi_get_reference_value(e->env, e->spare_ref, &ab) == napi_ok &&
            block_holds(e->env, ab, e->spare, PN_READ_BUF_SIZE);
  napi_close_handle_scope(e->env, scope);
  if (!ok) {
    napi_delete_reference(e->env, e->spare_ref);
    e->spare_ref = NULL;
    e->spare = NULL; /* reads go to read_buf until bulk makes a new one */
  }
  return ok;
}

/* Whether the `n` bytes at p are in the spare. */
static bool in_spare(const pn_env *e, const uint8_t *p, size_t n) {
  return e->spare != NULL && p >= e->spare && p + n <= e->spare + PN_READ_BUF_SIZE;
}

/* After a JS call that was handed `handed`: whether the `n` bytes a read
 * left at `nb` are still there to copy. A read that landed in read_buf or
 * was batched is in the addon's own memory. One that landed in the lend
 * block or the spare (`exposed`) is in a block JS has seen and may have
 * detached: the block handed over, when the read was delivered where it
 * landed, else the spare it was copied out of. */
static bool read_intact(pn_env *e, napi_value handed, const uint8_t *nb, size_t n, bool exposed) {
  if (!exposed || block_holds(e->env, handed, nb, n)) return true;
  return in_spare(e, nb, n) && spare_intact(e);
}

/* The `len` bytes just read at spare + spare_used, handed to JS where they
 * are: *ab is the spare's ArrayBuffer, *off their offset. The next read
 * lands after them; with too little left, a new spare replaces this one
 * (JS's views keep the old one alive as long as JS needs it). */
static bool lend_piece(pn_env *e, size_t len, napi_value *ab, size_t *off) {
  if (napi_get_reference_value(e->env, e->spare_ref, ab) != napi_ok || *ab == NULL) return false;
  *off = e->spare_used;
  e->spare_used += len;
  if (PN_READ_BUF_SIZE - e->spare_used < PN_SPARE_MIN) {
    napi_delete_reference(e->env, e->spare_ref);
    make_spare(e);
  }
  return true;
}

/* ---- lent reads ---------------------------------------------------------- */

/* A handler that uses each chunk only inside its call (an echo, a proxy, a
 * checksum) does not need a Buffer of its own per read, and bulk transfer
 * pays for one: every read lands in memory JS holds until V8's next GC,
 * tens of megabytes later, so reading and writing run through memory that
 * is not in the CPU's cache. Such a connection (lendReads(true)) reads,
 * whenever nothing is pending, into env->lend, the memory of a Buffer no
 * JS has seen, and the read is lent to JS where it landed, for the one
 * call that delivers it. After the call its ArrayBuffer is detached:
 * every view of it reads as empty from then on (a chunk kept against the
 * promise shows nothing, never later bytes), and V8 frees the memory at
 * once; a new Buffer takes the block's place, and malloc mostly hands it
 * the memory just freed, still in cache.
 * Bytes of the block a write queues are copied (write.c, pn_is_lent); the
 * JS side copies what it keeps past the call (src/stream.ts), and the
 * unframed tail of a framed read is copied into P before the block is taken
 * back. Small reads are batched (copied) as usual, and reads with bytes
 * pending before them are copied: only a read delivered alone, with nothing
 * pending, is lent (its chunk, or the frames cut from it). */
static void make_lend(pn_env *e) {
  e->lend = make_read_block(e, &e->lend_ref);
}

bool pn_is_lent(const pn_env *e, const uint8_t *p, size_t n) {
  return e->lend != NULL && p >= e->lend && p + n <= e->lend + PN_READ_BUF_SIZE;
}

/* Whether the read at nb, for c, is handed to JS as a loan. */
static bool lent_read(const pn_conn *c, const uint8_t *nb) {
  const pn_env *e = c->base.penv;
  return c->lend_reads && c->fr.plen == 0 && e->lend != NULL && nb == e->lend;
}

/* After the call a lent read was delivered by: takes the block back. */
static void lend_done(pn_env *e, napi_value ab) {
  /* Fails only for an ArrayBuffer JS already detached (transferred): then
   * its memory is not ours to reuse either way. */
  napi_detach_arraybuffer(e->env, ab);
  napi_delete_reference(e->env, e->lend_ref);
  make_lend(e);
}

/* lendReads(enable): reads of this connection are lent (see above). */
napi_value pn_conn_lend_reads(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  bool ok, on = false;
  pn_conn *c = pn_conn_arg(env, info, &argc, argv, &ok);
  if (!ok || !pn_get_bool(env, argv[0], "lendReads(): enable", &on)) return NULL;
  if (c == NULL) return NULL;
  c->lend_reads = on;
  if (on && c->base.penv->lend == NULL) make_lend(c->base.penv);
  return NULL;
}

/* ---- the read table ------------------------------------------------------ */

#define PN_BT_HEAD 5           /* size, count, id, offset, length */
#define PN_BT_STALE INT32_MIN  /* an entry JS must skip */
#define PN_BT_FIRST 2          /* table[0]: JS's cursor; entries start here */

/* The table's storage is e->bt (e->bt_cap words), kept in step with
 * e->btab_ref: whenever the table is replaced, both change together, so
 * e->bt never outlives the array it points into. */

/* Makes room for `words` words: a new, larger table, with its first `keep`
 * words copied, when they do not fit. */
static bool bt_reserve(pn_env *e, size_t words, size_t keep) {
  napi_env env = e->env;
  if (e->bt != NULL && words <= e->bt_cap) return true;
  size_t n = e->bt_cap * 2 > words ? e->bt_cap * 2 : words;
  if (n < 1024) n = 1024;
  void *data = NULL;
  napi_value ab, arr;
  /* On failure the caller goes on without it (bt_add: the read goes alone;
   * pn_flush_reads: no batching; pn_deliver: ENOMEM), so nothing is left
   * pending for the calls into JS that follow. */
  if (napi_create_arraybuffer(env, n * sizeof(int32_t), &data, &ab) != napi_ok ||
      napi_create_typedarray(env, napi_int32_array, n, ab, 0, &arr) != napi_ok) {
    pn_clear_exception(env);
    return false;
  }
  if (e->bt != NULL) memcpy(data, e->bt, keep * sizeof(int32_t));
  napi_ref ref;
  if (napi_create_reference(env, arr, 1, &ref) != napi_ok) {
    pn_clear_exception(env);
    return false;
  }
  if (e->btab_ref != NULL) napi_delete_reference(env, e->btab_ref);
  e->btab_ref = ref;
  e->bt = data;
  e->bt_cap = n;
  return true;
}

/* Checks the table is still there (JS could have detached its buffer) and
 * gets it ready: a new one when it is not. */
static bool bt_open(pn_env *e) {
  napi_env env = e->env;
  napi_typedarray_type type;
  size_t length = 0, offset;
  void *data = NULL;
  napi_value ab, arr;
  if (e->btab_ref != NULL && napi_get_reference_value(env, e->btab_ref, &arr) == napi_ok &&
      arr != NULL &&
      napi_get_typedarray_info(env, arr, &type, &length, &data, &ab, &offset) == napi_ok &&
      data != NULL && type == napi_int32_array && length >= 1024) {
    e->bt = data;
    e->bt_cap = length;
    return true;
  }
  e->bt = NULL;
  e->bt_cap = 0;
  return bt_reserve(e, 1024, 0);
}

/* Frames P + nb into the entry starting at `pos` (its pairs from
 * pos + PN_BT_HEAD on), growing the table as needed. */
static bool bt_scan(pn_conn *c, const uint8_t *nb, size_t nn, size_t pos, pn_scan_result *res) {
  pn_env *e = c->base.penv;
  pn_framing *fr = &c->fr;
  /* Room for the head, a few pairs, and `rest`. */
  if (!bt_reserve(e, pos + PN_BT_HEAD + 1 + 2 * 8, pos)) return false;
  pn_scan(fr, nb, nn, 0, fr->scanned, e->bt + pos + PN_BT_HEAD,
          (e->bt_cap - pos - PN_BT_HEAD - 1) / 2, res);
  while (res->full) {
    /* More frames than the table holds: grow it (keeping what is there)
     * and continue from where the scan stopped. */
    size_t got = res->count;
    if (!bt_reserve(e, e->bt_cap * 2, pos + PN_BT_HEAD + 2 * got)) return false;
    pn_scan_result more;
    pn_scan(fr, nb, nn, res->rest, res->search, e->bt + pos + PN_BT_HEAD + 2 * got,
            (e->bt_cap - pos - PN_BT_HEAD - 1) / 2 - got, &more);
    *res = more;
    res->count += got;
  }
  return true;
}

/* Writes the head and `rest` of the entry at `pos` (its pairs are there
 * already); returns the words it takes. */
static size_t bt_entry(pn_env *e, size_t pos, pn_conn *c, int32_t count, size_t off, size_t len,
                       size_t rest) {
  int32_t *t = e->bt + pos;
  size_t pairs = count > 0 ? (size_t)count : 0;
  t[0] = (int32_t)(PN_BT_HEAD + 2 * pairs + 1);
  t[1] = count;
  t[2] = c->id;
  t[3] = (int32_t)off;
  t[4] = (int32_t)len;
  t[PN_BT_HEAD + 2 * pairs] = (int32_t)rest;
  return (size_t)t[0];
}

/* ---- one read alone --------------------------------------------------------- */

/* Hands what P + nb hold to JS as a one-entry call, per the connection's
 * framing mode:
 *   raw:      count 0, everything;
 *   framing:  the frames, when at least one is complete (else the bytes
 *             just join P, and JS is not called);
 *   overflow: count -1, then raw mode.
 * The bytes always start at the first byte not yet delivered as a frame, so
 * JS may resetFraming() inside the call and carry on from `rest`.
 *
 * JS may close, reset or change the framing, or pause from inside the call,
 * so afterwards the state is checked again before P is touched. The loop
 * runs more than once only when P may still hold deliverable bytes: an
 * overflow that followed complete frames, or a framing change.
 *
 * Never called while a batch is built or sent (bt_count is 0): it uses the
 * table's first entry. Nor from inside a JS call: deliveries JS asks for
 * (readStart, setFraming) are deferred to the loop. */
void pn_deliver(pn_conn *c, const uint8_t *nb, size_t nn) {
  pn_env *e = c->base.penv;
  napi_env env = e->env;
  pn_framing *fr = &c->fr;
  napi_handle_scope scope;
  const size_t pos = PN_BT_FIRST;

  for (;;) {
    napi_value argv[3];
    pn_scan_result res = {0};
    int32_t count = 0;
    size_t off, len = fr->plen + nn, rest = len;
    uint32_t set_gen = c->set_gen, reset_gen = c->reset_gen;

    c->need_deliver = false;
    if (c->base.closing) return;
    if (len == 0) return;
    if (napi_open_handle_scope(env, &scope) != napi_ok) return;
    if (!bt_open(e)) goto nomem;

    if (fr->kind != PN_FRAME_RAW) {
      if (!bt_scan(c, nb, nn, pos, &res)) goto nomem;
      if (res.count == 0 && !res.overflow) {
        /* No complete frame yet: keep the bytes, skip the JS call. */
        napi_close_handle_scope(env, scope);
        if (!pn_framing_keep(fr, nb, nn, 0)) {
          pn_conn_emit_error(c, UV_ENOMEM, "read");
          return;
        }
        fr->scanned = res.search;
        return;
      }
      /* Overflow at the first undelivered byte: -1. */
      count = res.count > 0 ? (int32_t)res.count : -1; /* a count fits: offsets are int32 */
      rest = res.count > 0 ? res.rest : 0;
    }
    /* make_data allocates; the table lives outside V8's heap, so e->bt
     * stays valid across it. A lent read goes where it landed, the block. */
    const bool lent = lent_read(c, nb);
    /* Read into memory JS has seen (make_data may replace the spare). */
    const bool exposed = lent || (nb != NULL && in_spare(e, nb, nn));
    off = 0;
    if (!(lent ? napi_get_reference_value(env, e->lend_ref, &argv[0]) == napi_ok
               : make_data(e, fr, nb, nn, &argv[0], &off)) ||
        napi_get_reference_value(env, e->btab_ref, &argv[1]) != napi_ok ||
        napi_create_uint32(env, 1, &argv[2]) != napi_ok)
      goto nomem;
    bt_entry(e, pos, c, count, off, len, rest);
    e->bt[0] = PN_BT_FIRST - 1; /* nothing delivered yet */
    if (count <= 0) {
      /* Raw, or overflow: JS owns these bytes now. P is emptied (and an
       * overflow goes back to raw) before the call, so JS may set a framing
       * again from inside it. */
      if (fr->kind == PN_FRAME_RAW && e->spare == NULL && nn > PN_BATCH_READ && !lent)
        make_spare(e); /* bulk: worth having */
      if (count == 0) pn_framing_keep(fr, NULL, 0, fr->plen);
      else pn_framing_reset(fr);
    }
    pn_call(e, PN_CB_READ_BATCH, 3, argv);

    /* ---- after the callback: what did JS change? ---- */
    /* Done: raw and overflow kept nothing; closing frees P; after a reset
     * JS took over the rest (P is gone). Else the unframed tail joins P,
     * before a lent block is taken back. */
    const bool done = count <= 0 || c->base.closing || c->reset_gen != reset_gen;
    /* A tail in a block JS detached is gone: the connection fails (EFAULT). */
    const bool lost = !done && nn > 0 && !read_intact(e, argv[0], nb, nn, exposed);
    const bool kept = done || (!lost && pn_framing_keep(fr, nb, nn, res.rest));
    if (lent) lend_done(e, argv[0]);
    napi_close_handle_scope(env, scope);
    if (done) return;
    if (!kept) {
      pn_conn_emit_error(c, lost ? UV_EFAULT : UV_ENOMEM, "read");
      return;
    }
    nb = NULL;
    nn = 0;
    if (c->set_gen != set_gen) {
      fr->scanned = 0; /* new framing: P must be scanned from the start */
    } else {
      fr->scanned = res.search - res.rest;
      if (!res.overflow) return; /* the common case: done */
    }
    /* P may hold more to deliver. Do it now, or on readStart if JS paused. */
    if (fr->plen == 0) return;
    if (!c->reading) {
      c->need_deliver = true;
      return;
    }
  }

nomem:
  /* Could not create a JS value: these bytes cannot be delivered. */
  pn_clear_exception(env);
  napi_close_handle_scope(env, scope);
  pn_conn_emit_error(c, UV_ENOMEM, "read");
}

/* ---- libuv callbacks ---------------------------------------------------- */

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  pn_conn *c = h->data;
  pn_env *e = c->base.penv;
  (void)suggested;
  if (c->run_bytes >= PN_READ_RUN) {
    /* libuv reads a ready socket until a read comes back short, up to 32
     * times: a peer that keeps its socket full would have 8 MiB read and
     * delivered (4 million 2-byte lines) before any other connection is
     * looked at. An empty buffer ends this turn's reads without stopping
     * reading (read_cb gets UV_ENOBUFS); the socket, still readable, is
     * read again on the next turn, once the other ready connections, the
     * timers and the immediates have had theirs. */
    c->run_bytes = 0;
    c->yielded = true;
    buf->base = NULL;
    buf->len = 0;
    return;
  }
  if (!c->reading) {
    /* Paused: a read of at most PN_PAUSED_HOLD bytes, to be held in P. */
    buf->base = e->read_buf;
    buf->len = PN_PAUSED_HOLD;
  } else if (c->lend_reads && e->lend != NULL && c->fr.plen == 0) {
    buf->base = (char *)e->lend; /* see "lent reads" */
    buf->len = PN_READ_BUF_SIZE;
  } else if (e->spare != NULL && pn_list_empty(&e->ready) && spare_intact(e)) {
    /* Not while small reads wait in the batch: read_cb delivers them before
     * this read, and their handlers may detach the spare (a chunk of it moved
     * to a worker), taking this read's bytes with it. Then the read lands in
     * read_buf, which no JS sees, and is copied out as usual. */
    buf->base = (char *)e->spare + e->spare_used; /* at least PN_SPARE_MIN left */
    buf->len = PN_READ_BUF_SIZE - e->spare_used;
  } else {
    buf->base = e->read_buf;
    buf->len = PN_READ_BUF_SIZE;
  }
}

/* ---- batching ------------------------------------------------------------ */

/* Small reads are not handed to JS one by one: each JS call made with
 * napi_make_callback costs about as much as a small read itself (async
 * context, microtask checkpoint, nextTick queue). read_cb copies a small
 * read into env->batch and queues its connection; pn_flush_reads then
 * delivers every queued read inside one callback scope, so Node runs the
 * nextTick and microtask queues once per batch. It runs from the check
 * handle, right after the poll phase that did the reads, and before any
 * other event is delivered (pn_call), so events keep their order: a
 * connection's data always reaches JS before its EOF, error or close.
 * Bytes never wait in the batch past the loop iteration that read them. */

/* Stops libuv reading a paused connection once P holds PN_PAUSED_HOLD
 * bytes (see there); readStart reads on. */
static void pause_full(pn_conn *c) {
  if (c->reading || !c->uv_reading || c->fr.plen < PN_PAUSED_HOLD) return;
  uv_read_stop(&c->h.stream);
  c->uv_reading = false;
}

/* Bytes read for a connection JS has paused (since the read, or before
 * it): they join P, for readStart to deliver. */
static void hold(pn_conn *c, const uint8_t *nb, size_t nn) {
  if (!pn_framing_keep(&c->fr, nb, nn, 0)) {
    pn_conn_emit_error(c, UV_ENOMEM, "read");
    return;
  }
  c->need_deliver = true;
  pause_full(c);
}

static bool batch_add(pn_env *e, pn_conn *c, const uint8_t *nb, size_t nn) {
  if (e->batch_len + nn > e->batch_cap) {
    size_t cap = e->batch_cap * 2 > e->batch_len + nn ? e->batch_cap * 2 : e->batch_len + nn;
    if (cap < 64 * 1024) cap = 64 * 1024;
    uint8_t *p = realloc(e->batch, cap);
    if (p == NULL) return false;
    e->batch = p;
    e->batch_cap = cap;
  }
  memcpy(e->batch + e->batch_len, nb, nn);
  c->batch_off = e->batch_len;
  c->batch_n = nn;
  e->batch_len += nn;
  pn_list_push(&e->ready, &c->ready_link);
  if (!uv_is_active((uv_handle_t *)&e->check)) uv_check_start(&e->check, pn_check_cb);
  return true;
}

/* ---- one JS call per batch ------------------------------------------------ */

/* The reads of a batch reach JS in one call, one entry each: per read, the
 * napi_call_function and the entry into JS cost about as much as the rest
 * of delivering a small read. The bytes of a batch share one slab. What
 * pn_deliver does after its call (keep the unframed tail in P) is done here
 * before the call, so an entry needs nothing once JS has it: if JS resets
 * the framing inside it, the tail it drops is exactly data[rest..], which
 * JS holds, as with a read delivered alone.
 *
 * Only reads whose bytes (P + read) fit a slab piece and that complete at
 * least one frame without overflowing are batched; any other read is
 * delivered alone, after what is batched so far, so the order of reads is
 * kept. A read that completes no frame joins P and is not delivered.
 *
 * The one hazard: a handler of an earlier entry pauses, re-frames, resets or
 * closes the connection of a later entry, whose frames were cut with the
 * old settings. JS writes the position of the entry it is delivering to
 * table[0]; pn_batch_touch, run first by each of those calls, sees that the
 * connection's entry is further on, puts P back as it was before the entry
 * took it, and marks the entry stale (count PN_BT_STALE): JS skips it, and
 * after the call the read is delivered alone, as if it had never been
 * batched, under whatever JS set by then. */

typedef struct pn_batch_ent {
  pn_conn *c;
  size_t pos;     /* where the entry starts in the table */
  uint32_t plen;  /* P's length before the entry took it */
  bool stale;
  bool nomem;     /* left the batch, but P could not be put back */
} pn_batch_ent;

/* Puts the entry's read back where it was before the batch took it: P as it
 * was, to be delivered alone after the batch call. */
static void bt_unbatch(pn_env *e, pn_batch_ent *ent) {
  pn_conn *c = ent->c;
  pn_framing *fr = &c->fr;
  /* The old P was kept at the entry's offset (bt_add): not read from the
   * slab, which a handler of an earlier entry may have detached. */
  const uint8_t *old = e->bt_keep + e->bt[ent->pos + 3];
  pn_framing_keep(fr, NULL, 0, fr->plen); /* emptying P cannot fail */
  if (ent->plen > 0 && !pn_framing_keep(fr, old, ent->plen, 0))
    ent->nomem = true; /* the old P is lost: reported after the call */
  fr->scanned = 0; /* scan P again from its start */
  e->bt[ent->pos + 1] = PN_BT_STALE;
  ent->stale = true;
}

void pn_batch_touch(pn_conn *c) {
  pn_env *e = c->base.penv;
  if (!e->bt_sending || c->bt_idx < 0 || (size_t)c->bt_idx >= e->bt_count) return;
  pn_batch_ent *ent = &e->bt_ent[c->bt_idx];
  if (ent->c != c) return;
  /* Delivered already, or being delivered: the usual rules apply. */
  if (ent->stale || (int64_t)ent->pos <= (int64_t)e->bt[0]) return;
  bt_unbatch(e, ent);
}

/* Hands the batch built so far to JS in one call, then delivers alone the
 * reads that left it. */
static void bt_send(pn_env *e) {
  napi_env env = e->env;
  if (e->bt_count == 0) return;
  size_t count = e->bt_count;
  napi_value argv[3];
  argv[0] = e->bt_slab;
  e->bt[0] = PN_BT_FIRST - 1; /* nothing delivered yet */
  if (napi_get_reference_value(env, e->btab_ref, &argv[1]) == napi_ok &&
      napi_create_uint32(env, (uint32_t)count, &argv[2]) == napi_ok) {
    e->bt_sending = true;
    pn_call(e, PN_CB_READ_BATCH, 3, argv);
    e->bt_sending = false;
  }
  /* Entries JS never reached (the call failed) leave the batch too. */
  int64_t cursor = e->bt[0];
  for (size_t k = 0; k < count; k++) {
    pn_batch_ent *ent = &e->bt_ent[k];
    if (!ent->stale && (int64_t)ent->pos > cursor && !ent->c->base.closing) bt_unbatch(e, ent);
    ent->c->bt_idx = -1;
  }
  e->bt_count = 0;
  e->bt_words = PN_BT_FIRST;
  e->bt_slab = NULL;
  /* bt_ent is not touched by what follows: nothing is batched until the
   * next bt_add, and these deliveries are not batched. */
  for (size_t k = 0; k < count && !e->tearing_down; k++) {
    pn_batch_ent *ent = &e->bt_ent[k];
    pn_conn *c = ent->c;
    if (!ent->stale || c->base.closing) continue;
    if (ent->nomem) {
      pn_conn_emit_error(c, UV_ENOMEM, "read");
      continue;
    }
    const uint8_t *nb = e->batch + c->batch_off;
    if (!c->reading) hold(c, nb, c->batch_n);
    else pn_deliver(c, nb, c->batch_n);
  }
}

/* Adds the read (nb, nn) of `c` to the batch; false when it must be
 * delivered alone (P untouched then), or when P's bytes could not be kept
 * for want of memory (*lost: they are gone, and the connection must fail;
 * an empty P loses nothing, and the read is delivered alone). */
static bool bt_add(pn_conn *c, const uint8_t *nb, size_t nn, bool *lost) {
  pn_env *e = c->base.penv;
  pn_framing *fr = &c->fr;
  size_t len = fr->plen + nn;
  if (len == 0 || len > PN_SLAB_PIECE) return false;
  /* The batch's bytes share one slab: a full slab sends the batch first. */
  if (e->bt_count > 0 && (e->slab_ref == NULL || e->slab_used + len > PN_SLAB_SIZE)) {
    bt_send(e);
    if (c->base.closing || !c->reading || e->tearing_down) return false;
  }
  size_t pos = e->bt_words, count = 0;
  pn_scan_result res = {0};
  if (!bt_reserve(e, pos + PN_BT_HEAD + 1, pos)) return false;
  if (fr->kind != PN_FRAME_RAW) {
    if (!bt_scan(c, nb, nn, pos, &res)) return false;
    if (res.overflow) return false; /* alone: pn_deliver reports it */
    if (res.count == 0) {
      /* No complete frame yet: the bytes join P, JS is not called. */
      if (!pn_framing_keep(fr, nb, nn, 0)) {
        *lost = len > nn; /* P held bytes */
        return false;
      }
      fr->scanned = (uint32_t)res.search;
      return true;
    }
    count = res.count;
  }
  if (e->bt_ent_cap <= e->bt_count) {
    size_t cap = e->bt_ent_cap ? e->bt_ent_cap * 2 : 64;
    pn_batch_ent *p = realloc(e->bt_ent, cap * sizeof(*p));
    if (p == NULL) return false;
    e->bt_ent = p;
    e->bt_ent_cap = cap;
  }
  if (fr->plen > 0 && e->bt_keep == NULL && (e->bt_keep = malloc(PN_SLAB_SIZE)) == NULL)
    return false;
  napi_value ab;
  size_t off;
  uint8_t *dst = slab_take(e, len, &ab, &off);
  if (dst == NULL) return false;
  if (e->bt_count > 0 && dst - off != e->bt_slab_data) {
    /* Another slab after all (JS detached the old one): not this batch. The
     * piece taken stays unused. */
    return false;
  }
  put_bytes(dst, fr, nb, nn);
  uint32_t plen = fr->plen;
  if (plen > 0) memcpy(e->bt_keep + off, fr->pend, plen); /* for bt_unbatch */
  /* What pn_deliver does after its call, done now: P keeps the tail. */
  if (fr->kind == PN_FRAME_RAW) {
    pn_framing_keep(fr, NULL, 0, fr->plen);
  } else {
    if (!pn_framing_keep(fr, nb, nn, res.rest)) {
      *lost = plen > 0;
      return false;
    }
    fr->scanned = (uint32_t)(res.search - res.rest);
  }
  if (e->bt_count == 0) {
    e->bt_slab = ab;
    e->bt_slab_data = dst - off;
  }
  e->bt_words = pos + bt_entry(e, pos, c, (int32_t)count, off, len,
                                fr->kind == PN_FRAME_RAW ? len : res.rest);
  pn_batch_ent *ent = &e->bt_ent[e->bt_count];
  ent->c = c;
  ent->pos = pos;
  ent->plen = plen;
  ent->stale = false;
  ent->nomem = false;
  c->bt_idx = (int32_t)e->bt_count++;
  c->need_deliver = false;
  return true;
}

void pn_flush_reads(pn_env *e) {
  pn_scope scope;

  if (e->flushing || pn_list_empty(&e->ready)) return;
  if (e->tearing_down) {
    while (!pn_list_empty(&e->ready)) pn_list_remove(e->ready.next);
    e->batch_len = 0;
    return;
  }
  if (!pn_scope_open(e, &scope)) return;
  e->flushing = true;
  /* One call for the whole batch (see above), unless the callback scope or
   * the table could not be had: then the reads go one by one. */
  e->bt_count = 0;
  e->bt_words = PN_BT_FIRST;
  e->bt_slab = NULL;
  e->batching = e->in_scope && bt_open(e);
  /* JS cannot read from inside these calls (libuv reads only in the poll
   * phase), so nothing is added to the batch while it is delivered. */
  while (!pn_list_empty(&e->ready)) {
    pn_link *node = e->ready.next;
    pn_list_remove(node);
    pn_conn *c = pn_container_of(node, pn_conn, ready_link);
    const uint8_t *nb = e->batch + c->batch_off;
    size_t nn = c->batch_n;
    if (c->base.closing) continue;
    if (!c->reading) {
      hold(c, nb, nn); /* paused since the read */
      continue;
    }
    bool lost = false;
    if (e->batching && bt_add(c, nb, nn, &lost)) continue;
    bt_send(e); /* what is batched goes first */
    if (e->tearing_down) break;
    if (c->base.closing) continue;
    if (lost) {
      /* Delivered alone now, the read would make frames without P's bytes:
       * the connection fails instead, as when pn_deliver cannot keep P. */
      pn_conn_emit_error(c, UV_ENOMEM, "read");
      continue;
    }
    if (!c->reading) {
      hold(c, nb, nn);
      continue;
    }
    pn_deliver(c, nb, nn);
    if (e->tearing_down) break;
  }
  if (!e->tearing_down) bt_send(e);
  /* (Tearing down: entries not sent are dropped with everything else.) */
  for (size_t k = 0; k < e->bt_count; k++) e->bt_ent[k].c->bt_idx = -1;
  e->bt_count = 0;
  e->batching = false;
  e->flushing = false;
  e->batch_len = 0;
  if (e->batch_cap > 1024 * 1024) { /* do not hold on to a big batch */
    free(e->batch);
    e->batch = NULL;
    e->batch_cap = 0;
  }
  pn_scope_close(e, &scope);
}

void pn_check_cb(uv_check_t *h) {
  pn_env *e = h->data;
  uv_check_stop(h);
  pn_flush_reads(e);
}

static void read_cb(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
  pn_conn *c = stream->data;
  pn_env *e = c->base.penv;

  if (nread == UV_ENOBUFS && c->yielded) {
    c->yielded = false; /* alloc_cb's: not an error, reading goes on */
    return;
  }
  if (nread == 0) { /* EAGAIN: nothing to read after all */
    c->run_bytes = 0;
    return;
  }
  if (c->base.closing) return;
  if (nread > 0) {
    const uint8_t *nb = (const uint8_t *)buf->base;
    c->bytes_read += (uint64_t)nread;
    c->run_bytes = (size_t)nread == buf->len ? c->run_bytes + (uint32_t)nread : 0;
    if ((size_t)nread <= PN_BATCH_READ && e->check_ready && c->ready_link.next == NULL &&
        batch_add(e, c, nb, (size_t)nread))
      return;
    /* A large read (or a second one for this connection, or no memory for
     * the batch): what is batched goes first, then this one, at once. */
    pn_flush_reads(e);
    if (c->base.closing) return;
    if (!c->reading) {
      hold(c, nb, (size_t)nread); /* paused by what the flush delivered */
      return;
    }
    pn_deliver(c, nb, (size_t)nread);
    return;
  }
  /* nread < 0: libuv has stopped reading (on EOF and on errors alike).
   * A batched read of this connection goes first, while it still reads. */
  pn_flush_reads(e);
  if (c->base.closing) return;
  /* Frames P holds that wait for a deferred delivery (JS re-framed P during
   * the flush, or earlier in this poll phase) go before the EOF or error:
   * the deferred delivery would find the connection no longer reading. */
  if (c->reading && c->need_deliver) {
    pn_deliver(c, NULL, 0);
    if (c->base.closing) return;
  }
  /* Still undelivered: JS paused with frames held in P. */
  const bool held = c->need_deliver;
  c->reading = false;
  c->uv_reading = false;
  /* A write failed in this poll and waits to be reported (the peer reset
   * the connection and the write took its ECONNRESET, so this read finds a
   * plain EOF): that error ends the connection, as on node:net, not an EOF
   * (onEnd) before it. */
  if ((c->defer_bits & PN_DEFER_WRITE_ERROR) != 0) {
    pn_undefer(c, PN_DEFER_WRITE_ERROR);
    c->eof = nread == UV_EOF;
    pn_conn_emit_error(c, c->defer_write_err, "write");
    return;
  }
  if (nread != UV_EOF) {
    pn_conn_emit_error(c, (int)nread, "read");
    return;
  }
  /* EOF: the peer sent FIN. The write side stays usable (half-open). */
  c->eof = true;
  if (held) {
    c->end_pending = true; /* onEnd after those frames (readStart) */
    return;
  }
  pn_conn_emit(c, PN_CB_END);
}

/* ---- methods ------------------------------------------------------------- */

/*
 * bytesRead(): every byte read from this connection so far, including the
 * part of a frame the addon keeps in P without calling JS (a large frame
 * arriving slowly): the idle timer reads it to see such a peer is active.
 */
napi_value pn_conn_bytes_read(napi_env env, napi_callback_info info) {
  bool ok;
  napi_value result;
  pn_conn *c = pn_conn_arg(env, info, NULL, NULL, &ok);
  if (!ok) return NULL;
  napi_create_double(env, c == NULL ? 0 : (double)c->bytes_read, &result);
  return result;
}

/* readStart(): idempotent; a no-op once closed or after EOF. */
napi_value pn_conn_read_start(napi_env env, napi_callback_info info) {
  bool ok;
  pn_conn *c = pn_conn_arg(env, info, NULL, NULL, &ok);
  if (c == NULL || c->reading) return NULL;
  if (c->eof) {
    /* Nothing more to read; frames held in P at the EOF, then onEnd. */
    if (c->end_pending) {
      c->reading = true;
      pn_defer(c, PN_DEFER_DELIVER | PN_DEFER_END);
    }
    return NULL;
  }
  if (!c->uv_reading) {
    int err = uv_read_start(&c->h.stream, alloc_cb, read_cb);
    if (err == UV_ENOTCONN) return NULL; /* dead after a read error: nothing to read */
    if (err != 0 && err != UV_EALREADY) {
      pn_throw_uv(env, err, "read", NULL);
      return NULL;
    }
    c->uv_reading = true;
  }
  c->reading = true;
  /* Frames left in P by an earlier pause or framing change. */
  if (c->need_deliver) pn_defer(c, PN_DEFER_DELIVER);
  return NULL;
}

/* readStop(): idempotent. Nothing more is delivered until readStart; libuv
 * reads on into P up to PN_PAUSED_HOLD bytes (see there), so a reset or FIN
 * still reaches JS. A connection paused before it ever read (a stream
 * paused in its onConnect) starts reading so, as node:net's socket reads
 * from the start. */
napi_value pn_conn_read_stop(napi_env env, napi_callback_info info) {
  bool ok;
  pn_conn *c = pn_conn_arg(env, info, NULL, NULL, &ok);
  if (c == NULL) return NULL;
  if (!c->reading) {
    /* (uv_read_start fails, ENOTCONN, on one not connected yet or dead
     * after a read error: there is nothing to read then.) */
    if (!c->uv_reading && !c->eof && c->fr.plen < PN_PAUSED_HOLD &&
        uv_read_start(&c->h.stream, alloc_cb, read_cb) == 0)
      c->uv_reading = true;
    return NULL;
  }
  pn_batch_touch(c);
  c->reading = false;
  pause_full(c);
  return NULL;
}

/* setFraming(kind, value, limit) */
napi_value pn_conn_set_framing(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  bool ok;
  int64_t kind, size = 0;
  double limit_d;
  napi_valuetype t;
  void *delim = NULL;
  size_t dlen = 0;

  pn_conn *c = pn_conn_arg(env, info, &argc, argv, &ok);
  if (!ok) return NULL;
  if (!pn_get_int(env, argv[0], "setFraming(): kind", 0, 2, &kind)) return NULL;
  if (napi_typeof(env, argv[2], &t) != napi_ok || t != napi_number ||
      napi_get_value_double(env, argv[2], &limit_d) != napi_ok || limit_d != limit_d ||
      limit_d < 0) {
    pn_throw_type(env, "setFraming(): limit must be a number >= 0");
    return NULL;
  }
  /* Frame offsets are int32: cap the limit (Infinity included). */
  size_t limit = limit_d >= (double)PN_MAX_LIMIT ? PN_MAX_LIMIT : (size_t)limit_d;

  if (kind == PN_FRAME_DELIM) {
    bool is_buf = false;
    if (napi_is_buffer(env, argv[1], &is_buf) != napi_ok || !is_buf ||
        napi_get_buffer_info(env, argv[1], &delim, &dlen) != napi_ok) {
      pn_throw_type(env, "setFraming(1, value, limit) expects value to be a Buffer");
      return NULL;
    }
    if (dlen == 0 || dlen > PN_MAX_DELIMITER) {
      pn_throw_range(env, "setFraming(): the delimiter must be 1 byte to 64 KiB long");
      return NULL;
    }
  } else if (kind == PN_FRAME_SIZE) {
    if (!pn_get_int(env, argv[1], "setFraming(2, size, limit): size", 1, (int64_t)PN_MAX_LIMIT,
                    &size))
      return NULL;
    if ((size_t)size > limit) limit = (size_t)size;
  }
  if (c == NULL) return NULL; /* closed: nothing to set */
  pn_batch_touch(c);
  /* P is kept: "switching resets nothing" (resetFraming drops it). */
  pn_framing *fr = &c->fr;
  if (!pn_framing_set_delim(fr, delim, dlen)) { /* dlen 0 unless kind is DELIM */
    /* No memory for the delimiter. Reading on under the old framing would
     * cut wrong frames, and a throw would land in whatever JS code set it
     * (a tick of the stream's, with no handler around it): the connection
     * stops reading and fails with a read error, from the loop. */
    c->reading = false;
    c->need_deliver = false;
    if (c->uv_reading) uv_read_stop(&c->h.stream);
    c->uv_reading = false;
    pn_defer(c, PN_DEFER_READ_NOMEM);
    return NULL;
  }
  fr->kind = (int)kind;
  fr->size = (uint32_t)size;
  fr->limit = (uint32_t)limit;
  fr->scanned = 0;
  c->set_gen++;
  if (fr->plen > 0) {
    /* P may hold complete frames under the new framing: deliver them from
     * the loop (never from inside this call). */
    c->need_deliver = true;
    if (c->reading) pn_defer(c, PN_DEFER_DELIVER);
  }
  return NULL;
}

/* takePending(): P's bytes (a copy; undefined when P is empty), then back to
 * raw with P dropped. After the EOF nothing more is read, so JS frames what P
 * held itself: a readDelimiter set later (after an await, before onEnd) then
 * frames those bytes too, which the addon, no longer reading, would not
 * deliver. */
napi_value pn_conn_take_pending(napi_env env, napi_callback_info info) {
  bool ok;
  napi_value out = NULL;
  pn_conn *c = pn_conn_arg(env, info, NULL, NULL, &ok);
  if (c == NULL) return NULL;
  pn_batch_touch(c);
  pn_framing *fr = &c->fr;
  if (fr->plen > 0 && napi_create_buffer_copy(env, fr->plen, fr->pend, NULL, &out) != napi_ok) {
    pn_throw_uv(env, UV_ENOMEM, "malloc", NULL);
    return NULL;
  }
  pn_framing_reset(fr);
  c->reset_gen++;
  c->need_deliver = false;
  return out;
}

/* resetFraming(): drop P, back to raw. */
napi_value pn_conn_reset_framing(napi_env env, napi_callback_info info) {
  bool ok;
  pn_conn *c = pn_conn_arg(env, info, NULL, NULL, &ok);
  if (c == NULL) return NULL;
  pn_batch_touch(c);
  pn_framing_reset(&c->fr);
  c->reset_gen++;
  c->need_deliver = false;
  return NULL;
}
