/*
 * A glibc malloc setting for a process that reads in bulk.
 *
 * Every chunk the addon hands to JS lives in a Buffer that V8 frees only at
 * its next GC, dozens of megabytes later. With glibc's defaults a chunk of
 * 128 KiB or more (a 256 KiB bulk read) is mmap()ed on its own and unmapped
 * when freed, so the next reads fault every one of its pages in again:
 * measured on a bulk echo, about 150 000 page faults per second and half the
 * throughput. So the first load of the addon, on glibc, sets the mmap
 * threshold to 1 MiB: such chunks come from the heap, whose pages stay
 * mapped (about 4 000 faults/s on the same run). glibc's own adaptive
 * threshold would get there too, but only after the first large frees, and
 * it stops adapting once anything is set by hand. The trim threshold stays
 * at its default: memory at the top of the heap still goes back to the
 * kernel (keeping more measured no faster, and cost idle memory).
 *
 * Left alone when the user already chose (MALLOC_*_ variables or
 * GLIBC_TUNABLES), and off with PANTS_TS_MALLOC_TUNING=0.
 */
#include <stdlib.h>
#include <string.h>

#include "common.h"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

void pn_tune_malloc(void) {
#if defined(__GLIBC__) && defined(M_MMAP_THRESHOLD)
  static int done = 0;
  if (__atomic_exchange_n(&done, 1, __ATOMIC_ACQ_REL)) return; /* once per process */
  const char *off = getenv("PANTS_TS_MALLOC_TUNING");
  if (off != NULL && strcmp(off, "0") == 0) return;
  if (getenv("GLIBC_TUNABLES") != NULL || getenv("MALLOC_MMAP_THRESHOLD_") != NULL ||
      getenv("MALLOC_TRIM_THRESHOLD_") != NULL)
    return;
  mallopt(M_MMAP_THRESHOLD, 1024 * 1024);
#endif
}
