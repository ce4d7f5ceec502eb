/*
 * aligwctl's shared parts: the connection to aligwd (one at a time, over the Unix socket), the
 * request/response exchange and the formatting helpers, used by the command table in
 * aligwctl.c and by the live view and health check in aligwctl_top.c.
 */
#ifndef ALIGW_ALIGWCTL_H
#define ALIGW_ALIGWCTL_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

/* Exit codes (documented in the usage text and docs/operations.md). */
enum { EXIT_OK = 0, EXIT_FAILED = 1, EXIT_USAGE = 2, EXIT_NOT_RUNNING = 3, EXIT_DENIED = 4 };

extern bool ctl_json; /* --json: print the daemon's lines as they are */

/* Connects to the socket; EXIT_OK or an exit code (the reason was printed). */
int ctl_connect(void);
/* Sends req (stolen, given id 1) and returns the response, or NULL with *code set (printed). */
json_t *ctl_call(json_t *req, int *code);
json_int_t ctl_geti(json_t *o, const char *k);
void ctl_fmt_bytes(char *out, size_t n, double b);
void ctl_fmt_age(char *out, size_t n, double s); /* s < 0 prints "-" */
double ctl_now_ms(void);                         /* wall clock */
int ctl_term_rows(void);                         /* 0 when stdout is not a terminal */

/* aligwctl_top.c: `health` and `top`; args are the command's words after its name. */
int ctl_health(int argc, char **argv);
int ctl_top(int argc, char **argv);

#endif
