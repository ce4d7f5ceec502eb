/*
 * netwatch_stub: netwatch (daemon/netwatch.h) for test_devices: the network is up or down as
 * the test says, and a change is announced the way netwatch does it, through the callback
 * given to netwatch_start. Hosts listed in stub_net_down_host have no route while the rest
 * follow stub_net_up.
 */
#include "netwatch_stub.h"

#include <string.h>

bool stub_net_up = true;
const char *stub_net_down_host;
static netwatch_changed_fn cb;
static void *cb_arg;
static bool running;
static uint64_t changes;

int netwatch_start(uv_loop_t *loop, netwatch_changed_fn changed, void *arg)
{
    (void)loop;
    cb = changed;
    cb_arg = arg;
    running = true;
    return 0;
}

void netwatch_stop(void)
{
    running = false;
    cb = NULL;
}

bool netwatch_running(void)
{
    return running;
}

bool netwatch_reachable(const char *host)
{
    if (!running)
        return true;
    if (stub_net_down_host && host && strcmp(host, stub_net_down_host) == 0)
        return false;
    return stub_net_up;
}

uint64_t netwatch_changes(void)
{
    return changes;
}

void stub_net_set(bool up)
{
    stub_net_up = up;
    changes++;
    if (cb)
        cb(cb_arg);
}
