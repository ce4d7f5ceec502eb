/*
 * paho_common: what the plain-Paho benchmark peers share: reading the device table (the CSV that
 * aligwd and the local hub read), a monotonic clock and the process's resident memory.
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
/* Reads up to want devices from the CSV table at path into a new array (*out). Returns how many,
 * or -1 when the file cannot be read. */
int bench_load_devices(const char *path, struct bench_device **out, int want);
/* Frees what bench_load_devices returned. */
void bench_free_devices(struct bench_device *devs, int n);

#endif
