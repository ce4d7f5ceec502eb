/* paho_common: device table, clocks, pacing, CPU, RSS and heap figures for the benchmark peers
 * (see the header). */
#include "paho_common.h"

#include <errno.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

const char *bench_prog = "bench";

double bench_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

double bench_wall_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

double bench_cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

void bench_sleep_until(double t)
{
    struct timespec ts;
    if (t <= bench_now_s())
        return;
    ts.tv_sec = (time_t)t;
    ts.tv_nsec = (long)((t - (double)ts.tv_sec) * 1e9);
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
    }
}

int bench_write_times(const char *path, const double *times, long n, long first)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    for (long i = 0; i < n; i++)
        if (times[i] > 0)
            fprintf(f, "%ld %.6f\n", first + i, times[i]);
    return fclose(f) == 0 ? 0 : -1;
}

long bench_rss_kb(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = -1;
    while (f && fgets(line, sizeof(line), f))
        if (sscanf(line, "VmRSS: %ld kB", &kb) == 1)
            break;
    if (f)
        fclose(f);
    return kb;
}

void bench_heap_kb(long *in_use, long *free_kb)
{
    struct mallinfo2 mi = mallinfo2(); /* glibc sums every arena */
    *in_use = (long)((mi.uordblks + mi.hblkhd) / 1024);
    *free_kb = (long)(mi.fordblks / 1024);
}

/* Splits one CSV record (RFC 4180 quoting, no embedded newlines) into at most max fields. */
static int csv_split(char *line, char **fields, int max)
{
    int n = 0;
    char *r = line, *w = line;
    for (;;) {
        if (n == max)
            return -1;
        fields[n++] = w;
        if (*r == '"') {
            r++;
            for (;;) {
                if (*r == '\0')
                    return -1;
                if (*r == '"' && r[1] == '"') {
                    *w++ = '"';
                    r += 2;
                } else if (*r == '"') {
                    r++;
                    break;
                } else {
                    *w++ = *r++;
                }
            }
        }
        while (*r && *r != ',')
            *w++ = *r++;
        if (*r == '\0') {
            *w = '\0';
            return n;
        }
        *w++ = '\0';
        r++;
        w = r;
    }
}

int bench_load_devices(const char *path, struct bench_device **out, int want)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "%s: %s: %s\n", bench_prog, path, strerror(errno));
        return -1;
    }
    char line[4096];
    char *fields[32];
    int col_pk = -1, col_dn = -1, col_ds = -1, col_cid = -1, have_header = 0, n = 0;
    struct bench_device *devs = calloc((size_t)want, sizeof(*devs));
    while (devs && n < want && fgets(line, sizeof(line), f)) {
        char *s = line;
        if (!strncmp(s, "\xEF\xBB\xBF", 3))
            s += 3;
        s[strcspn(s, "\r\n")] = '\0';
        if (s[0] == '\0' || s[0] == '#')
            continue;
        int nf = csv_split(s, fields, 32);
        if (nf < 0) {
            fprintf(stderr, "%s: %s: bad CSV line\n", bench_prog, path);
            break;
        }
        if (!have_header) {
            for (int i = 0; i < nf; i++) {
                col_pk = !strcmp(fields[i], "product_key") ? i : col_pk;
                col_dn = !strcmp(fields[i], "device_name") ? i : col_dn;
                col_ds = !strcmp(fields[i], "device_secret") ? i : col_ds;
                col_cid = !strcmp(fields[i], "client_id") ? i : col_cid;
            }
            have_header = 1;
            if (col_pk < 0 || col_dn < 0 || col_ds < 0) {
                fprintf(stderr,
                        "%s: %s: need product_key, device_name, "
                        "device_secret columns\n",
                        bench_prog, path);
                break;
            }
            continue;
        }
        if (col_pk >= nf || col_dn >= nf || col_ds >= nf || !fields[col_ds][0])
            continue;
        devs[n].pk = strdup(fields[col_pk]);
        devs[n].dn = strdup(fields[col_dn]);
        devs[n].ds = strdup(fields[col_ds]);
        devs[n].cid =
            col_cid >= 0 && col_cid < nf && fields[col_cid][0] ? strdup(fields[col_cid]) : NULL;
        n++;
    }
    fclose(f);
    *out = devs;
    return n;
}

void bench_free_devices(struct bench_device *devs, int n)
{
    for (int i = 0; i < n; i++) {
        free(devs[i].pk);
        free(devs[i].dn);
        free(devs[i].ds);
        free(devs[i].cid);
    }
    free(devs);
}
