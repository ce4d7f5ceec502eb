/*
 * endturn: run a callback once at the end of the current loop turn. A module that gathers work
 * during a turn (the outbox's group commit) arms it as often as it likes; the callback runs once,
 * in the check phase after this turn's I/O callbacks. An idle handle keeps the loop from blocking
 * in poll until then, so work armed from a check or idle callback still runs without waiting for
 * I/O.
 */
#ifndef ALIGW_ENDTURN_H
#define ALIGW_ENDTURN_H

#include <stdbool.h>
#include <uv.h>

struct endturn {
    uv_check_t check;
    uv_idle_t idle;
    void (*cb)(void *data);
    void *data;
    bool armed;
};

void endturn_init(struct endturn *t, uv_loop_t *loop, void (*cb)(void *data), void *data);

/* Schedules the callback for the end of this turn; arming twice runs it once. */
void endturn_arm(struct endturn *t);

/* Closes both handles; close_cb is called twice, once per handle, with the handle's data set
 * to the owner's data pointer (the one given to endturn_init). */
void endturn_close(struct endturn *t, uv_close_cb close_cb);

#endif
