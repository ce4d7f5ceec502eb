/*
 * endturn: one callback at the end of the loop turn (see endturn.h). A uv_check handle does the
 * work; a uv_idle handle, started with it, makes poll return at once so the check phase comes
 * without waiting for I/O. Both stop when the callback runs, so an idle daemon sleeps in poll.
 */
#include "endturn.h"

static void on_check(uv_check_t *h)
{
    struct endturn *t = h->data;
    uv_check_stop(&t->check);
    uv_idle_stop(&t->idle);
    t->armed = false;
    t->cb(t->data);
}

static void on_idle(uv_idle_t *h)
{
    (void)h; /* only keeps poll from blocking before the check runs */
}

void endturn_init(struct endturn *t, uv_loop_t *loop, void (*cb)(void *data), void *data)
{
    uv_check_init(loop, &t->check);
    uv_idle_init(loop, &t->idle);
    t->check.data = t->idle.data = t;
    t->cb = cb;
    t->data = data;
    t->armed = false;
}

void endturn_arm(struct endturn *t)
{
    if (t->armed)
        return;
    t->armed = true;
    uv_check_start(&t->check, on_check);
    uv_idle_start(&t->idle, on_idle);
}

void endturn_close(struct endturn *t, uv_close_cb close_cb)
{
    t->armed = false;
    t->check.data = t->idle.data = t->data;
    uv_close((uv_handle_t *)&t->check, close_cb);
    uv_close((uv_handle_t *)&t->idle, close_cb);
}
