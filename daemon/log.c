/*
 * log: stderr writer with syslog priority prefixes (see log.h). One write(2) per line so lines
 * from the loop and from worker threads never interleave mid-line.
 */
#include "log.h"

#include "errors.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

int log_level = LOG_INFO;

static void vwrite_line(int prio, int err, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));
static void vwrite_line(int prio, int err, const char *fmt, va_list ap)
{
    char line[2048];
    int n = snprintf(line, sizeof(line), "<%d>", prio);
    int m = vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);

    if (m < 0)
        m = 0;
    n += m;
    if ((size_t)n > sizeof(line) - 80)
        n = (int)sizeof(line) - 80; /* truncated: keep room for the error and newline */
    if (err < 0)
        n += snprintf(line + n, sizeof(line) - (size_t)n, ": %s", aligw_strerror(err));
    line[n++] = '\n';
    (void)!write(STDERR_FILENO, line, (size_t)n);
}

void log_write(int prio, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vwrite_line(prio, 0, fmt, ap);
    va_end(ap);
}

void log_write_err(int prio, int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vwrite_line(prio, err, fmt, ap);
    va_end(ap);
}

int log_level_parse(const char *name)
{
    static const struct {
        const char *name;
        int level;
    } levels[] = {{"error", LOG_ERR},
                  {"warning", LOG_WARNING},
                  {"notice", LOG_NOTICE},
                  {"info", LOG_INFO},
                  {"debug", LOG_DEBUG}};
    for (size_t i = 0; name && i < sizeof(levels) / sizeof(levels[0]); i++)
        if (strcasecmp(name, levels[i].name) == 0)
            return levels[i].level;
    return -1;
}
