/*
 * glibc malloc settings for a process that reads in bulk.
 *
 * Every chunk the addon hands to JS lives in a Buffer that V8 frees only at
 * its next GC, dozens of megabytes later (V8 runs a young-generation GC when
 * about 32 MB of young ArrayBuffers have piled up). Two glibc defaults make
 * the next reads fault those pages in again:
 *
 * - The mmap threshold. A chunk of 128 KiB or more (a 256 KiB bulk read) is
 *   mmap()ed on its own and unmapped when freed: measured on a bulk echo,
 *   about 150 000 page faults per second and half the throughput. So the
 *   first load of the addon sets it to 1 MiB: such chunks come from the heap,
 *   whose pages stay mapped. glibc's own adaptive threshold would get there
 *   too, but only after the first large frees, and it stops adapting once
 *   anything is set by hand.
 * - The trim threshold. When a GC frees the tens of megabytes of chunks at
 *   the top of the heap, glibc gives back every free byte above 128 KiB, and
 *   the next megabytes of reads fault them in again: 10 000-20 000 faults/s
 *   on the same bulk echo. So the first bulk read (pn_tune_malloc_bulk, when
 *   the addon makes its first spare read block) raises it to 32 MiB, about
 *   what one GC cycle of reads spans: under 1 000 faults/s, about 5 % more
 *   throughput. Only then: raised at load, it kept heap memory that
 *   connection setup had freed, and cost an idle server about 200 bytes per
 *   connection (measured at 10 000 connections); a server that never reads
 *   in bulk keeps the default.
 *
 * Left alone when the user already chose (MALLOC_MMAP_THRESHOLD_,
 * MALLOC_TRIM_THRESHOLD_ or GLIBC_TUNABLES), and off with
 * PANTS_TS_MALLOC_TUNING=0.
 */
#include <stdlib.h>
#include <string.h>

#include "common.h"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#if defined(__GLIBC__) && defined(M_MMAP_THRESHOLD) && defined(M_TRIM_THRESHOLD)
/* Whether the settings are ours to make: set once, by pn_tune_malloc. */
static int tuning = 0;

void pn_tune_malloc(void) {
  static int done = 0;
  if (__atomic_exchange_n(&done, 1, __ATOMIC_ACQ_REL)) return; /* once per process */
  const char *off = getenv("PANTS_TS_MALLOC_TUNING");
  if (off != NULL && strcmp(off, "0") == 0) return;
  if (getenv("GLIBC_TUNABLES") != NULL || getenv("MALLOC_MMAP_THRESHOLD_") != NULL ||
      getenv("MALLOC_TRIM_THRESHOLD_") != NULL)
    return;
  mallopt(M_MMAP_THRESHOLD, 1024 * 1024);
  __atomic_store_n(&tuning, 1, __ATOMIC_RELEASE);
}

void pn_tune_malloc_bulk(void) {
  static int done = 0;
  if (!__atomic_load_n(&tuning, __ATOMIC_ACQUIRE)) return;
  if (__atomic_exchange_n(&done, 1, __ATOMIC_ACQ_REL)) return; /* once per process */
  mallopt(M_TRIM_THRESHOLD, 32 * 1024 * 1024);
}
#else
void pn_tune_malloc(void) {}
void pn_tune_malloc_bulk(void) {}
#endif
