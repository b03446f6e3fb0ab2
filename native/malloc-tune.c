/*
 * glibc malloc settings for a process that reads in bulk.
 *
 * Every chunk the addon hands to JS lives in a Buffer that V8 frees only at
 * its next GC, dozens of megabytes later. With glibc's defaults that memory
 * goes straight back to the kernel: a 256 KiB chunk is mmap()ed on its own,
 * and freed runs at the top of the heap are trimmed once they pass 128 KiB.
 * The next reads then fault every page in again: measured on a bulk echo,
 * about 150 000 page faults per second and half the throughput. So the
 * first load of the addon, on glibc, sets fixed thresholds: blocks below
 * 1 MiB come from the heap, and the heap keeps up to 64 MiB free at its top.
 * That is memory the process would allocate again within milliseconds under
 * load; an idle process keeps at most that much more than before.
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
#if defined(__GLIBC__) && defined(M_MMAP_THRESHOLD) && defined(M_TRIM_THRESHOLD)
  static int done = 0;
  if (__atomic_exchange_n(&done, 1, __ATOMIC_ACQ_REL)) return; /* once per process */
  const char *off = getenv("PANTS_TS_MALLOC_TUNING");
  if (off != NULL && strcmp(off, "0") == 0) return;
  if (getenv("GLIBC_TUNABLES") != NULL || getenv("MALLOC_MMAP_THRESHOLD_") != NULL ||
      getenv("MALLOC_TRIM_THRESHOLD_") != NULL)
    return;
  mallopt(M_MMAP_THRESHOLD, 1024 * 1024);
  mallopt(M_TRIM_THRESHOLD, 64 * 1024 * 1024);
#endif
}
