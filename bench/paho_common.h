/*
 * paho_common: what the plain-Paho benchmark peers share: reading the device table (the CSV that
 * aligwd and the local hub read), a monotonic clock, the process's resident memory, CPU time and
 * malloc statistics.
 */
#ifndef ALIGW_BENCH_PAHO_COMMON_H
#define ALIGW_BENCH_PAHO_COMMON_H

struct bench_device {
    char *pk, *dn, *ds, *cid; /* cid NULL when the table has no client_id */
};

/* The program's name for error messages. */
extern const char *bench_prog;

double bench_now_s(void);
/* VmRSS of this process in KB, or -1. */
long bench_rss_kb(void);
/* CPU time (user + system, all threads) of this process so far, in seconds. */
double bench_cpu_s(void);
/* malloc's view of the heap (all arenas): bytes in use (incl. mmapped chunks) and bytes free
 * inside the arenas (held by the process, so counted in RSS once touched), in KB. */
void bench_heap_kb(long *in_use, long *free_kb);
/* Reads up to want devices from the CSV table at path into a new array (*out). Returns how many,
 * or -1 when the file cannot be read. */
int bench_load_devices(const char *path, struct bench_device **out, int want);
/* Frees what bench_load_devices returned. */
void bench_free_devices(struct bench_device *devs, int n);

#endif
