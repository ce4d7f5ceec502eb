/*
 * plugin_load: opens a plugin's shared object and validates its descriptor (ABI major, size,
 * required entry points). Used by aligwd for in-process plugins and --check-config, and by
 * aligw-plugin-host for the plugin it runs, so both refuse exactly the same files.
 */
#ifndef ALIGW_PLUGIN_LOAD_H
#define ALIGW_PLUGIN_LOAD_H

#include <aligw/plugin.h>

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * dlopen(path, RTLD_NOW | RTLD_LOCAL), finds "aligw_plugin" and copies the descriptor into
 * *desc (zero beyond the plugin's .size). Returns 0 and *dl, or ALIGW_EPLUGIN with a message
 * naming path in err; on failure nothing stays loaded.
 */
int plugin_load_so(const char *path, void **dl, struct aligw_plugin *desc, char *err, size_t len);

/*
 * The argument rules of the firmware host calls (ABI 1.2), the same in aligwd and in
 * aligw-plugin-host: a firmware_result has job_id > 0, step 0 or -1..-4 and a version of 0-64
 * printable bytes; set_firmware_version a version of 1-64 and a module of 0-64 printable bytes.
 */
bool plugin_fw_result_ok(int64_t job_id, int step, const char *version);
bool plugin_fw_version_ok(const char *module, const char *version);

/*
 * ABI 1.3's event list: the names of a descriptor's "events" (at most 32 names of 1-32 bytes of
 * [a-z_]; others are skipped and, when skipped is given, joined there for a log line) as one
 * string ",state,service_call," (malloc'd; "" for none; NULL when out of memory), the form both
 * sides keep and the plugin host sends in W_STARTED. plugin_events_has looks a kind up in it.
 */
char *plugin_events_join(const char *const *events, char *skipped, size_t skipped_len);
bool plugin_events_has(const char *joined, const char *kind);

/*
 * ABI 1.3's host->request, checked the same way on both sides of the plugin socket: one JSON
 * object of at most PLUGIN_REQUEST_MAX bytes; a "device" member must name device_key. "id" is
 * set (to 1: the cookie correlates); aligwd adds the device to an op that takes one
 * (ipc_local_request). *out is the request text to serve (malloc'd). Returns 0, -EINVAL,
 * -EPERM (another device) or -ENOMEM.
 */
#define PLUGIN_REQUEST_MAX (1024 * 1024)
int plugin_request_prepare(const char *request_json, const char *device_key, char **out);

/* Formats err and returns ALIGW_EPLUGIN. */
int plugin_refuse(char *err, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
