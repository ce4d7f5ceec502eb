/*
 * paho_common: what the plain-Paho benchmark peers share: reading the device table (the CSV that
 * aligwd and the local hub read), the clocks, pacing (sleep until a time), the process's CPU,
 * resident memory and malloc statistics, and a per-message send-time file.
 */
#ifndef ALIGW_BENCH_PAHO_COMMON_H
#define ALIGW_BENCH_PAHO_COMMON_H

struct bench_device {
    char *pk, *dn, *ds, *cid; /* cid NULL when the table has no client_id */
};

/* The program's name for error messages. */
extern const char *bench_prog;

double bench_now_s(void);
/* CLOCK_REALTIME in seconds (what the consumer stamps arrivals with). */
double bench_wall_s(void);
/* User + system CPU of this process (all threads) in seconds, as /proc/self/stat counts it. */
double bench_cpu_s(void);
/* Sleeps until bench_now_s() reaches t (returns at once when it has). */
void bench_sleep_until(double t);
/* Writes "i wall_seconds" lines for times[0..n) (0 = never sent, left out) to path; 0 or -1. */
int bench_write_times(const char *path, const double *times, long n, long first);
/* VmRSS of this process in KB, or -1. */
long bench_rss_kb(void);
/* malloc's view of the heap (all arenas): bytes in use (incl. mmapped chunks) and bytes free
 * inside the arenas (held by the process, so counted in RSS once touched), in KB. */
void bench_heap_kb(long *in_use, long *free_kb);
/* Reads up to want devices from the CSV table at path into a new array (*out). Returns how many,
 * or -1 when the file cannot be read. */
int bench_load_devices(const char *path, struct bench_device **out, int want);
/* Frees what bench_load_devices returned. */
void bench_free_devices(struct bench_device *devs, int n);

#endif
