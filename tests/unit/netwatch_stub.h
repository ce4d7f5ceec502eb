/* netwatch_stub: the network as test_devices says it is (see netwatch_stub.c). */
#ifndef ALIGW_NETWATCH_STUB_H
#define ALIGW_NETWATCH_STUB_H

#include "netwatch.h"

extern bool stub_net_up;
extern const char *stub_net_down_host;
/* Sets the network up or down and announces the change as a settled netwatch event. */
void stub_net_set(bool up);

#endif
