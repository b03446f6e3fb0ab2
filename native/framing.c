/*
 * Frame scanning: pure C, no Node-API and no libuv.
 *
 * A connection in framing mode keeps P, the bytes received but not yet
 * delivered as a frame. When a read arrives, the scanner looks for frames in
 * the *virtual* concatenation P + new bytes, so nothing is copied just to
 * search. A bytes delimiter may straddle the boundary between P and the new
 * bytes (or between any two reads); those few positions are compared byte by
 * byte. The search resumes where the previous one stopped (fr->scanned), so
 * a long frame arriving in small pieces costs linear time overall.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memmem */
#endif
#include <stdlib.h>
#include <string.h>

#include "common.h"

void pn_framing_init(pn_framing *fr) {
  memset(fr, 0, sizeof(*fr));
  fr->kind = PN_FRAME_RAW;
}

static void free_delim(pn_framing *fr) {
  if (fr->dlen > PN_DELIM_INLINE) free(fr->d.heap);
  fr->dlen = 0;
}

void pn_framing_free(pn_framing *fr) {
  free_delim(fr);
  free(fr->pend);
  pn_framing_init(fr);
}

bool pn_framing_set_delim(pn_framing *fr, const uint8_t *delim, size_t dlen) {
  uint8_t *heap = NULL;
  if (dlen > PN_DELIM_INLINE && (heap = malloc(dlen)) == NULL) return false;
  free_delim(fr);
  if (heap != NULL) {
    memcpy(heap, delim, dlen);
    fr->d.heap = heap;
  } else {
    memcpy(fr->d.inl, delim, dlen);
  }
  fr->dlen = (uint32_t)dlen;
  return true;
}

void pn_framing_reset(pn_framing *fr) { pn_framing_free(fr); }

/* First occurrence of needle in hay, or NULL. */
static const uint8_t *find_bytes(const uint8_t *hay, size_t hlen,
                                 const uint8_t *needle, size_t nlen) {
  if (hlen < nlen) return NULL;
  if (nlen == 1) return memchr(hay, needle[0], hlen);
  return memmem(hay, hlen, needle, nlen);
}

/* Byte i of P + nb. */
static inline uint8_t byte_at(const pn_framing *fr, const uint8_t *nb, size_t i) {
  return i < fr->plen ? fr->pend[i] : nb[i - fr->plen];
}

/* Position of the first delimiter starting at or after `from` in P + nb, or
 * SIZE_MAX. A match wholly inside P always starts before one that straddles
 * P and nb, which starts before one wholly inside nb, so searching the three
 * zones in order finds the first. */
static size_t find_delim(const pn_framing *fr, const uint8_t *nb, size_t nn,
                         size_t from) {
  const size_t plen = fr->plen, d = fr->dlen, total = plen + nn;
  const uint8_t *delim = pn_delim(fr), *hit;

  if (from < plen) {
    hit = find_bytes(fr->pend + from, plen - from, delim, d);
    if (hit != NULL) return (size_t)(hit - fr->pend);
    /* Straddling positions: start in P, end in nb. */
    size_t s = plen + 1 > d ? plen + 1 - d : 0;
    if (s < from) s = from;
    for (; s < plen && s + d <= total; s++) {
      size_t k = 0;
      while (k < d && byte_at(fr, nb, s + k) == delim[k]) k++;
      if (k == d) return s;
    }
  }
  size_t off = from > plen ? from - plen : 0;
  if (off >= nn) return SIZE_MAX;
  hit = find_bytes(nb + off, nn - off, delim, d);
  return hit != NULL ? plen + (size_t)(hit - nb) : SIZE_MAX;
}

void pn_scan(const pn_framing *fr, const uint8_t *nb, size_t nn, size_t start,
             size_t search_from, int32_t *out, size_t max_frames,
             pn_scan_result *res) {
  const size_t total = fr->plen + nn;
  size_t pos = start; /* start of the current (not yet complete) frame */
  size_t count = 0;

  memset(res, 0, sizeof(*res));

  if (fr->kind == PN_FRAME_SIZE) {
    while (total - pos >= fr->size) {
      if (count == max_frames) {
        res->full = true;
        break;
      }
      out[2 * count] = (int32_t)pos;
      out[2 * count + 1] = (int32_t)(pos + fr->size);
      pos += fr->size;
      count++;
    }
    res->count = count;
    res->rest = pos;
    res->search = pos;
    return;
  }

  if (fr->kind != PN_FRAME_DELIM) { /* raw: nothing to scan */
    res->rest = start;
    res->search = start;
    return;
  }

  const size_t d = fr->dlen;
  size_t from = search_from > pos ? search_from : pos;
  for (;;) {
    size_t idx = find_delim(fr, nb, nn, from);
    if (idx == SIZE_MAX) {
      /* No delimiter yet. The last d-1 bytes might be the start of one, so
       * (like the JS framer) only the bytes before them count against the
       * limit. */
      if (total - pos > fr->limit + (d - 1)) res->overflow = true;
      res->search = total + 1 > d && total + 1 - d > pos ? total + 1 - d : pos;
      break;
    }
    if (idx - pos > fr->limit) {
      res->overflow = true;
      res->search = pos;
      break;
    }
    if (count == max_frames) {
      res->full = true;
      res->search = idx;
      break;
    }
    out[2 * count] = (int32_t)pos;
    out[2 * count + 1] = (int32_t)idx;
    count++;
    pos = idx + d;
    from = pos;
  }
  res->count = count;
  res->rest = pos;
}

bool pn_framing_keep(pn_framing *fr, const uint8_t *nb, size_t nn, size_t from) {
  const size_t plen = fr->plen, total = plen + nn;
  if (from >= total) {
    fr->plen = 0;
    if (fr->pcap > PN_KEEP_CAP) { /* do not hold on to a big buffer */
      free(fr->pend);
      fr->pend = NULL;
      fr->pcap = 0;
    }
    return true;
  }
  const size_t newlen = total - from;
  size_t kept = 0;      /* bytes of the new P that come from the old P */
  size_t nb_from = 0;   /* where the new P's bytes start in nb */
  if (from < plen) {
    kept = plen - from;
    if (from > 0) memmove(fr->pend, fr->pend + from, kept);
  } else {
    nb_from = from - plen;
  }
  fr->plen = kept;

  size_t cap = fr->pcap;
  if (newlen > cap) {
    cap = cap * 2 > newlen ? cap * 2 : newlen;
    if (cap < 256) cap = 256;
  } else if (cap > PN_KEEP_CAP && newlen < cap / 4) {
    cap = newlen < 4096 ? 4096 : newlen; /* shrink after a big frame */
  }
  if (cap != fr->pcap) {
    uint8_t *p = realloc(fr->pend, cap);
    if (p == NULL) {
      if (newlen > fr->pcap) { /* could not grow: give up on P */
        free(fr->pend);
        fr->pend = NULL;
        fr->pcap = 0;
        fr->plen = 0;
        return false;
      }
      /* could not shrink: keep the bigger buffer */
    } else {
      fr->pend = p;
      fr->pcap = cap;
    }
  }
  if (nn > nb_from) memcpy(fr->pend + kept, nb + nb_from, nn - nb_from);
  fr->plen = newlen;
  return true;
}
