/*
 * fuzz_config: feeds arbitrary bytes to config_load_buffer() as a configuration file. Whatever
 * the input, loading must return 0 with a config or an error list, never crash or leak; a
 * loaded config is also walked once so lookups run over what the loader produced.
 */
#include <stdint.h>
#include <stdlib.h>

#include "config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct config *c = NULL;
    struct config_errors errs = {0}, warns = {0};
    int r = config_load_buffer("fuzz.json", (const char *)data, size, &c, &errs, &warns);
    if (r == 0) {
        for (size_t i = 0; i < c->n_devices; i++)
            if (config_find_device(c, c->devices[i].product_key, c->devices[i].device_name) !=
                &c->devices[i])
                abort();
        config_free(c);
    } else if (errs.n == 0) {
        abort(); /* a refused config always says why */
    }
    config_errors_free(&errs);
    config_errors_free(&warns);
    return 0;
}
