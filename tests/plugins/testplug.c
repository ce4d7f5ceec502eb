/*
 * testplug: a plugin built several ways to exercise the host's refusals and failure paths.
 *   (default)   a well-behaved plugin: services "flood" (posts 50 times at once, counting
 *               refusals) and "report" (replies {"accepted":N,"rejected":N}); logs on create
 *   BAD_ABI     claims ABI major + 1
 *   FAIL_START  start() fails after reporting a device state
 *   NO_SYMBOL   exports no aligw_plugin symbol
 */
#include <aligw/plugin.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

struct inst {
    const struct aligw_host *host;
    const struct aligw_device *devs;
    int accepted, rejected;
};

static int tp_create(const struct aligw_host *host, const char *config_json,
                     const struct aligw_device *devices, size_t n, void **instance)
{
    struct inst *t = calloc(1, sizeof *t);
    if (!t)
        return -ENOMEM;
    t->host = host;
    t->devs = devices;
    host->log(host, ALIGW_LOG_INFO, "created with %zu device(s), config %s", n, config_json);
    *instance = t;
    return 0;
}

static int tp_start(void *inst)
{
#ifdef FAIL_START
    struct inst *t = inst;
    t->host->set_device_state(t->host, &t->devs[0], 0, "testplug about to fail");
    return -EIO;
#else
    return 0;
#endif
}

static void tp_stop(void *inst)
{
}

static void tp_destroy(void *inst)
{
    free(inst);
}

static int tp_service(void *inst, const struct aligw_device *dev, const char *req_id,
                      const char *service_id, const char *params_json)
{
    struct inst *t = inst;
    char data[64];
    if (service_id[0] == 'f') { /* flood */
        t->host->reply(t->host, dev, req_id, 200, NULL);
        for (int i = 0; i < 50; i++) {
            int rc = t->host->post_properties(t->host, dev, "{\"i\":1}", 0);
            if (rc == 0)
                t->accepted++;
            else if (rc == -EAGAIN)
                t->rejected++;
        }
        return 0;
    }
    snprintf(data, sizeof data, "{\"accepted\":%d,\"rejected\":%d}", t->accepted, t->rejected);
    return t->host->reply(t->host, dev, req_id, 200, data);
}

#ifdef NO_SYMBOL
#define DESCRIPTOR aligw_plugin_misspelled /* exported under the wrong name */
#else
#define DESCRIPTOR aligw_plugin
#endif
ALIGW_PLUGIN_EXPORT const struct aligw_plugin DESCRIPTOR = {
#ifdef BAD_ABI
    .abi_major = ALIGW_PLUGIN_ABI_MAJOR + 1,
#else
    .abi_major = ALIGW_PLUGIN_ABI_MAJOR,
#endif
    .abi_minor = ALIGW_PLUGIN_ABI_MINOR,
    .size = sizeof(struct aligw_plugin),
    .name = "testplug",
    .version = "0",
    .create = tp_create,
    .start = tp_start,
    .stop = tp_stop,
    .destroy = tp_destroy,
    .on_service_call = tp_service,
};
